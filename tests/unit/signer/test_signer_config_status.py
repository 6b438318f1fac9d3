"""signer.config: the ca.d files' ``[status]`` table (read with the frontend's parser) and
``[policy] verify_status`` (true / false / absent = auto)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from frontend.config import load_ca_file
from shared.config import ConfigError
from shared.status.config import StatusConfig
from signer import __main__ as signer_main
from signer.config import load_signer_config
from tests.unit.signer.signer_fixtures import make_ca, write_setup

INDEX_LINE = "V\t301231235959Z\t\t1000\tunknown\t/CN=leaf\n"
DEFAULT_STATUS = '[status]\nsource = "index"\npath = "index.txt"\n'  # what write_setup writes


def setup(base: Path, *, status: str | None = DEFAULT_STATUS, verify: str | None = None,
          files: tuple[str, ...] = ("index.txt",)) -> Path:
    """signer.toml with one CA "alpha" whose file carries ``status`` (None: no [status] table), and
    ``verify`` as [policy] verify_status (None: not set); ``files`` are created in ca.d/."""
    conf = write_setup(base, [make_ca("alpha")])
    ca_file = base / "ca.d" / "alpha.toml"
    text = ca_file.read_text()
    assert DEFAULT_STATUS in text
    ca_file.write_text(text.replace(DEFAULT_STATUS, status or ""))
    for name in files:
        (base / "ca.d" / name).write_text(INDEX_LINE)
    if verify is not None:
        text = conf.read_text()
        conf.write_text(text.replace('max_clock_skew = "5m"\n', f'max_clock_skew = "5m"\nverify_status = {verify}\n'))
    return conf


def test_auto_reads_the_status_table(tmp_path: Path) -> None:
    cfg = load_signer_config(setup(tmp_path))
    assert cfg.policy.verify_status is None
    rc = cfg.responders[0]
    assert rc.status == StatusConfig(source="index", path=tmp_path / "ca.d" / "index.txt",
                                     validity=timedelta(hours=24), check_interval=timedelta(seconds=5))
    assert rc.status_unused is None
    assert cfg.verifies_status


def test_both_halves_read_the_same_table(tmp_path: Path) -> None:
    crl = ('[status]\nsource = "crl"\npath = "crl.pem"\nissued_serials = "issued.txt"\nunissued = "revoked"\n'
           'max_shrink = "2.5%"\ncheck_interval = "250ms"\n')
    cfg = load_signer_config(setup(tmp_path, status=crl, files=("crl.pem", "issued.txt")))
    frontend_view = load_ca_file(tmp_path / "ca.d" / "alpha.toml").status
    assert cfg.responders[0].status == frontend_view
    assert frontend_view.unissued == "revoked" and frontend_view.max_shrink == 0.025
    assert frontend_view.issued_serials == tmp_path / "ca.d" / "issued.txt"


def test_auto_without_a_status_table_is_off(tmp_path: Path) -> None:
    cfg = load_signer_config(setup(tmp_path, status=None))
    assert cfg.responders[0].status is None and cfg.responders[0].status_unused is None
    assert not cfg.verifies_status


def test_auto_with_files_missing_here_is_off_and_says_why(tmp_path: Path) -> None:
    """The ca.d file is shared with a frontend host; without a copy of the data here the signer starts as
    before (the start-up warning reads ``status_unused``)."""
    cfg = load_signer_config(setup(tmp_path, files=()))
    rc = cfg.responders[0]
    assert rc.status is None
    assert rc.status_unused is not None and rc.status_unused.startswith("status.path: ")
    assert "index.txt" in rc.status_unused
    assert not cfg.verifies_status


def test_false_ignores_the_table(tmp_path: Path) -> None:
    """Off: the table is not read at all, not even checked (as before verify_status existed)."""
    cfg = load_signer_config(setup(tmp_path, status='[status]\nsource = "nonsense"\n', verify="false"))
    assert cfg.policy.verify_status is False
    assert cfg.responders[0].status is None and cfg.responders[0].status_unused is None
    assert not cfg.verifies_status


def test_true_with_the_data_here(tmp_path: Path) -> None:
    cfg = load_signer_config(setup(tmp_path, verify="true"))
    assert cfg.policy.verify_status is True
    assert cfg.responders[0].status is not None and cfg.verifies_status


CRL_MISSING_ISSUED = '[status]\nsource = "crl"\npath = "index.txt"\nissued_serials = "gone.txt"\nunissued = "unknown"\n'

ERRORS = [
    # id, status table, verify_status, file the error names, key
    ("true-needs-a-table", None, "true", "alpha.toml", "status"),
    ("true-needs-the-file", DEFAULT_STATUS, "true", "alpha.toml", "status.path"),
    ("true-needs-issued-serials", CRL_MISSING_ISSUED, "true", "alpha.toml", "status.issued_serials"),
    ("not-a-bool", DEFAULT_STATUS, '"yes"', "signer.toml", "policy.verify_status"),
    ("auto-bad-source", '[status]\nsource = "ldap"\npath = "index.txt"\n', None, "alpha.toml", "status.source"),
    ("auto-unknown-key", DEFAULT_STATUS + "colour = 1\n", None, "alpha.toml", "status.colour"),
    ("auto-crl-without-unissued", '[status]\nsource = "crl"\npath = "index.txt"\n', None, "alpha.toml",
     "status.unissued"),
    ("auto-index-with-unissued", DEFAULT_STATUS + 'unissued = "good"\n', None, "alpha.toml", "status.unissued"),
    ("auto-bad-share", DEFAULT_STATUS + 'max_shrink = "lots"\n', None, "alpha.toml", "status.max_shrink"),
    ("auto-not-a-table", 'status = "index.txt"\n', None, "alpha.toml", "status"),
]


@pytest.mark.parametrize("status,verify,file,key", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_name_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str | None,
                                  verify: str | None, file: str, key: str) -> None:
    files = () if key == "status.path" else ("index.txt",)
    if status is not None and status.startswith("status ="):
        # a top-level key: it must come before the [responder] table
        conf = setup(tmp_path, status=None, verify=verify, files=files)
        ca_file = tmp_path / "ca.d" / "alpha.toml"
        ca_file.write_text(status + ca_file.read_text())
    else:
        conf = setup(tmp_path, status=status, verify=verify, files=files)
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert Path(info.value.file).name == file
    assert info.value.key == key, info.value
    assert signer_main.main(["--config", str(conf), "--check"]) == 2
    assert capsys.readouterr().err.startswith(f"ocsp-signer: {info.value.file}: {key}: ")


URL_STATUS = ('[status]\nsource = "crl"\nurl = "https://ca.example/alpha.crl"\nstate_dir = "state"\n'
              'unissued = "unknown"\n')


def test_a_fetched_crl_needs_a_writable_state_dir_here(tmp_path: Path) -> None:
    """status.url: the signer fetches its own copy into its own state_dir; without that directory the
    CA is left unchecked in auto mode (and saying why), and verify_status = true refuses to start."""
    cfg = load_signer_config(setup(tmp_path, status=URL_STATUS, files=()))
    rc = cfg.responders[0]
    assert rc.status is None and rc.status_unused is not None and rc.status_unused.startswith("status.state_dir: ")
    with pytest.raises(ConfigError) as info:
        load_signer_config(setup(tmp_path, status=URL_STATUS, files=(), verify="true"))
    assert info.value.key == "status.state_dir"
    (tmp_path / "ca.d" / "state").mkdir()
    cfg = load_signer_config(setup(tmp_path, status=URL_STATUS, files=()))
    status = cfg.responders[0].status
    assert status is not None and status.fetch is not None and status.fetch.url == "https://ca.example/alpha.crl"
    assert status == load_ca_file(tmp_path / "ca.d" / "alpha.toml").status  # both halves read the same table


def test_a_compromised_ca_is_checked_without_its_files(tmp_path: Path) -> None:
    cfg = load_signer_config(setup(tmp_path, status=DEFAULT_STATUS + "compromised = true\n", files=(), verify="true"))
    status = cfg.responders[0].status
    assert status is not None and status.compromised and cfg.verifies_status
