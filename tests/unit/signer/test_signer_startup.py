"""The signer's start-up (signer.config, signer.responders, signer.startup, through ``serve`` and
``ocsp-signer --check``): what it refuses to start with, naming the file and key, and the config values
it reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from shared.clock import FakeClock
from shared.config import ConfigError
from signer import __main__ as signer_main
from signer.config import load_signer_config
from signer.service import serve
from tests.unit.signer.signer_fixtures import (
    AUDIT_LABEL,
    NOW,
    FakeToken,
    SplitKeyToken,
    make_ca,
    make_cert,
    new_key,
    pem,
    short_dir,
    token_for,
    write_setup,
)

# -- start-up refusals --------------------------------------------------------------------------------


def test_token_key_must_match_certificate(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = FakeToken({ca.key_label: new_key("p256")})  # some other key under the right label

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        assert info.value.file == str(base / "ca.d" / "alpha.toml")
        assert info.value.key == "responder.key_label"
        assert "not the key of the responder certificate" in info.value.message

    asyncio.run(main())


def test_token_private_key_must_pair_with_certificate(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])
    token = SplitKeyToken(token_for(ca).keys, private={ca.key_label: new_key("p256")})

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=token, clock=FakeClock(NOW))
        assert info.value.key == "responder.key_label"
        assert "not the pair of the responder certificate's key" in info.value.message
        assert token.threads == {"pkcs11_0"}  # the probe ran on the token thread

    asyncio.run(main())


def test_token_key_missing(tmp_path: Path) -> None:
    base = short_dir(tmp_path)
    ca = make_ca("alpha")
    conf = write_setup(base, [ca])

    async def main() -> None:
        with pytest.raises(ConfigError) as info:
            await serve(load_signer_config(conf), token=FakeToken({}), clock=FakeClock(NOW))
        assert info.value.key == "responder.key_label" and "alpha-responder" in info.value.message

    asyncio.run(main())


def _foreign_issuer() -> tuple[x509.Certificate, Any]:
    k = new_key("p256")
    return make_cert("Foreign CA", k, None, k, ca=True), k


CONFIG_CASES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    # id, setup writer (returns signer.toml), file name the error must name, key
    ("not-issued-by-ca", lambda b: write_setup(b, [make_ca("alpha", responder_issuer=_foreign_issuer())]),
     "alpha.toml", "responder.cert"),
    ("no-ocsp-eku", lambda b: write_setup(b, [make_ca("alpha", eku=False)]), "alpha.toml", "responder.cert"),
    ("duplicate-name", lambda b: _dup_name(b), "b.toml", "name"),
    ("duplicate-issuer", lambda b: _dup_issuer(b), "b.toml", "ca_cert"),
    ("unknown-key", lambda b: write_setup(b, [make_ca("alpha")], signer_extra="colour = 1\n"),
     "signer.toml", "colour"),
    ("pin-in-config", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'label = "test"\n',
                                      'label = "test"\npin = "1234"\n'), "signer.toml", "token.pin"),
    ("label-and-serial", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'label = "test"\n',
                                         'label = "test"\nserial = "abc"\n'), "signer.toml", "token.label"),
    ("no-pin-source", lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'pin_file = "token.pin"\n', ""),
     "signer.toml", "token.pin_file"),
    ("bad-duration", lambda b: _edit(write_setup(b, [make_ca("alpha")]), '"7d"', '"seven days"'),
     "signer.toml", "policy.max_validity"),
    ("bad-address", lambda b: write_setup(b, [make_ca("alpha")], address="nowhere"), "signer.toml",
     "listen.address"),
    ("bad-responder-id",
     lambda b: write_setup(b, [make_ca("alpha")], responder_extra={"responder_id": '"hash"'}),
     "alpha.toml", "responder.responder_id"),
    ("ca-unknown-key", lambda b: write_setup(b, [make_ca("alpha")], ca_extra="colour = 1\n"), "alpha.toml",
     "colour"),
    ("ca-cert-garbage", lambda b: _garbage_ca(b), "alpha.toml", "ca_cert"),
    ("no-ca-files", lambda b: _no_cas(b), "signer.toml", "ca_dir"),
    ("audit-key-is-a-responder-key",
     lambda b: _edit(write_setup(b, [make_ca("alpha")]), f'key_label = "{AUDIT_LABEL}"', 'key_label = "alpha-responder"'),
     "signer.toml", "audit.key_label"),
    ("sub-second-checkpoint-interval",
     lambda b: _edit(write_setup(b, [make_ca("alpha")]), 'writer_id = "test"\n',
                     'writer_id = "test"\ncheckpoint_interval = "1500ms"\n'),
     "signer.toml", "audit.checkpoint_interval"),
]


def _edit(conf: Path, old: str, new: str) -> Path:
    text = conf.read_text()
    assert old in text
    conf.write_text(text.replace(old, new))
    return conf


def _dup_name(base: Path) -> Path:
    a, b = make_ca("a"), make_ca("b")
    conf = write_setup(base, [a, b])
    _edit(base / "ca.d" / "b.toml", 'name = "b"', 'name = "a"')
    return conf


def _dup_issuer(base: Path) -> Path:
    a, b = make_ca("a"), make_ca("b")
    conf = write_setup(base, [a, b])
    (base / "b" / "ca.pem").write_bytes(pem(a.cert))
    (base / "b" / "responder.der").write_bytes((base / "a" / "responder.der").read_bytes())
    return conf


def _garbage_ca(base: Path) -> Path:
    conf = write_setup(base, [make_ca("alpha")])
    (base / "alpha" / "ca.pem").write_bytes(b"not a certificate")
    return conf


def _no_cas(base: Path) -> Path:
    conf = write_setup(base, [make_ca("alpha")])
    (base / "ca.d" / "alpha.toml").unlink()
    return conf


@pytest.mark.parametrize("name,setup,file,key", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                       setup: Callable[[Path], Path], file: str, key: str) -> None:
    conf = setup(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_signer_config(conf)
    assert Path(info.value.file).name == file
    assert info.value.key == key, info.value
    # The command line prints it as "ocsp-signer: <file>: <key>: <message>" and exits 2.
    assert signer_main.main(["--config", str(conf), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ocsp-signer: {info.value.file}: {key}: "), err


def test_config_values(tmp_path: Path) -> None:
    direct = make_ca("direct", direct=True)
    conf = write_setup(tmp_path, [make_ca("alpha"), direct], responder_extra={"include_cert": "false"})
    cfg = load_signer_config(conf)
    assert cfg.listen.kind == "unix" and cfg.listen.path == tmp_path / "signer.sock"
    assert cfg.token.label == "test" and cfg.token.serial is None
    assert cfg.token.pin_file == tmp_path / "token.pin" and cfg.token.pin_env is None
    assert cfg.policy.max_validity == timedelta(days=7)
    assert cfg.policy.max_clock_skew == timedelta(minutes=5)
    assert cfg.policy.max_cert_ids == 8
    assert [r.name for r in cfg.responders] == ["alpha", "direct"]
    alpha = cfg.responders[0]
    assert alpha.responder_id == "key" and alpha.include_cert is False
    assert alpha.key_label == "alpha-responder"
    assert cfg.responders[1].cert == cfg.responders[1].ca_cert  # the CA signs directly


@pytest.mark.parametrize("address,ok", [
    ("127.0.0.1:50051", True),
    ("[::1]:50051", True),
    ("localhost:50051", True),
    ("0.0.0.0:50051", False),
    ("192.0.2.1:50051", False),
    ("ocsp.example:50051", False),
])
def test_plaintext_only_on_loopback(tmp_path: Path, address: str, ok: bool) -> None:
    cfg = load_signer_config(write_setup(tmp_path, [make_ca("alpha")], address=address))
    if ok:
        signer_main.check_plaintext_allowed(cfg)
    else:
        with pytest.raises(ConfigError) as info:
            signer_main.check_plaintext_allowed(cfg)
        assert info.value.key == "listen.address" and "plaintext" in info.value.message


def test_sighup_is_ignored_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    seen: list[Any] = []

    def load(path: str) -> Any:
        seen.append(signal.getsignal(signal.SIGHUP))
        raise ConfigError(Path(path), "ca_dir", "stop here")

    previous = signal.getsignal(signal.SIGHUP)
    monkeypatch.setattr(signer_main, "load_signer_config", load)
    try:
        assert signer_main.main(["--config", "x.toml"]) == 2
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen == [signal.SIG_IGN]
