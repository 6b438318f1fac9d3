"""frontend.config: defaults, CA files, and errors that name the file and key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from frontend.config import MAX_WORKERS, default_workers, load_frontend_config
from shared.config import ConfigError
from shared.ocsp.types import HashAlgorithm
from tests.unit.frontend.frontend_pki import TestCA, write


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("Config CA")


def setup(tmp: Path, ca: TestCA, frontend: str = "", cafile: str | None = None) -> Path:
    (tmp / "ca.d").mkdir(exist_ok=True)
    write(tmp / "ca.pem", ca.pem)
    write(tmp / "index.txt", "V\t300101000000Z\t\t1001\tunknown\t/CN=leaf\n")
    write(tmp / "crl.pem", b"")
    if cafile is None:
        cafile = ('ca_cert = "../ca.pem"\n[responder]\ncert = "x"\n'
                  '[status]\nsource = "index"\npath = "../index.txt"\n')
    write(tmp / "ca.d" / "one.toml", cafile)
    return write(tmp / "frontend.toml", 'ca_dir = "ca.d"\n' + frontend)


def test_defaults(tmp_path: Path, ca: TestCA) -> None:
    cfg = load_frontend_config(setup(tmp_path, ca))
    assert cfg.listen.host == "127.0.0.1" and cfg.listen.port == 2560 and cfg.listen.path_prefix == "/"
    assert cfg.listen.max_request_bytes == 10000 and cfg.listen.max_cert_ids == 8
    assert cfg.listen.allowed_hashes == tuple(HashAlgorithm)
    assert (cfg.listen.max_connections, cfg.listen.max_connections_per_client,
            cfg.listen.max_inflight_per_client) == (4096, 512, 64)
    assert cfg.listen.workers == default_workers()
    assert cfg.signer.addresses == ("127.0.0.1:50051",) and cfg.signer.timeout == 2.0
    assert cfg.cache.max_entries == 10000 and cfg.cache.max_age == timedelta(hours=1)
    assert cfg.cache.max_bytes == 64 << 20 and cfg.cache.max_key_bytes == 1024
    assert cfg.cache.redis is None and cfg.cache.store_config() is None
    assert (cfg.cache.redis_prefix, cfg.cache.redis_timeout) == ("ocsp:", 0.05)
    (one,) = cfg.cas
    assert one.name == "one" and one.ca_cert_der == ca.der
    assert one.status.source == "index" and one.status.validity == timedelta(hours=24)
    assert one.status.path == tmp_path / "ca.d" / "../index.txt"


def test_full(tmp_path: Path, ca: TestCA) -> None:
    fe = ('[listen]\nport = 0\npath_prefix = "/ocsp"\nallowed_hashes = ["sha256", "SHA-384"]\n'
          'max_connections = 100\nmax_connections_per_client = 0\nmax_inflight_per_client = 4\nworkers = 3\n'
          '[signer]\naddresses = ["unix:/run/s.sock", "127.0.0.2:50051"]\ntimeout = "500ms"\n'
          '[cache]\nmax_entries = 5\nmax_age = "10m"\nmax_bytes = 1000000\nmax_key_bytes = 300\n'
          'redis = "rediss://u:pw@redis.example:6380/2"\nredis_prefix = "fleet-1:"\nredis_timeout = "20ms"\n')
    cafile = ('name = "x"\nca_cert = "../ca.pem"\n[status]\nsource = "crl"\npath = "../crl.pem"\n'
              'unissued = "revoked"\n')
    cfg = load_frontend_config(setup(tmp_path, ca, fe, cafile))
    assert cfg.listen.path_prefix == "/ocsp/" and cfg.listen.port == 0
    assert cfg.listen.allowed_hashes == (HashAlgorithm.SHA256, HashAlgorithm.SHA384)
    assert (cfg.listen.max_connections, cfg.listen.max_connections_per_client,
            cfg.listen.max_inflight_per_client) == (100, 0, 4)
    assert cfg.listen.workers == 3
    assert cfg.signer.addresses == ("unix:/run/s.sock", "127.0.0.2:50051") and cfg.signer.timeout == 0.5
    assert (cfg.cache.max_entries, cfg.cache.max_bytes, cfg.cache.max_key_bytes) == (5, 1000000, 300)
    assert cfg.cas[0].status.unissued == "revoked" and cfg.cas[0].status.issued_serials is None
    store = cfg.cache.store_config()
    assert store is not None
    assert (store.url, store.prefix, store.timeout) == ("rediss://u:pw@redis.example:6380/2", "fleet-1:", 0.02)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "unix:///run/redis/redis.sock", "rediss://h"])
def test_redis_urls(tmp_path: Path, ca: TestCA, url: str) -> None:
    assert load_frontend_config(setup(tmp_path, ca, f'[cache]\nredis = "{url}"\n')).cache.redis == url


@pytest.mark.parametrize("frontend,cafile,key", [
    ("[listen]\nprot = 1\n", None, "listen.prot"),
    ("[listen]\npath_prefix = \"ocsp\"\n", None, "listen.path_prefix"),
    ("[listen]\nallowed_hashes = [\"md5\"]\n", None, "listen.allowed_hashes"),
    ("[listen]\nmax_connections = 0\n", None, "listen.max_connections"),
    ("[listen]\nmax_connections_per_client = -1\n", None, "listen.max_connections_per_client"),
    ("[listen]\nmax_inflight_per_client = \"8\"\n", None, "listen.max_inflight_per_client"),
    ("[listen]\nworkers = 0\n", None, "listen.workers"),
    ("[listen]\nworkers = 257\n", None, "listen.workers"),
    ("[listen]\nworkers = \"auto\"\n", None, "listen.workers"),
    ("[signer]\naddress = \"nohostport\"\n", None, "signer.address"),
    ("[signer]\naddress = \"a:1\"\naddresses = [\"b:2\"]\n", None, "signer.addresses"),
    ("[cache]\nmax_age = \"soon\"\n", None, "cache.max_age"),
    ("[cache]\nmax_bytes = -1\n", None, "cache.max_bytes"),
    ("[cache]\nmax_key_bytes = 10\n", None, "cache.max_key_bytes"),
    ("[cache]\nredis = \"http://h:6379\"\n", None, "cache.redis"),
    ("[cache]\nredis = \"unix://\"\n", None, "cache.redis"),
    ("[cache]\nredis = \"\"\n", None, "cache.redis"),
    ("[cache]\nredis_prefix = \"a b\"\n", None, "cache.redis_prefix"),
    ("[cache]\nredis_timeout = \"0ms\"\n", None, "cache.redis_timeout"),
    ("[cache]\nredis_timeout = \"1m\"\n", None, "cache.redis_timeout"),
    ("[metrics]\naddress = \"9102\"\n", None, "metrics.address"),
    ("[metrics]\naddress = \"127.0.0.1:99999\"\n", None, "metrics.address"),
    ("[metrics]\naddress = 9102\n", None, "metrics.address"),
    ("[metrics]\naddress = \"127.0.0.1:2560\"\n", None, "metrics.address"),  # the OCSP port
    ("[metrics]\nadress = \"127.0.0.1:9102\"\n", None, "metrics.adress"),
    ("", 'ca_cert = "../ca.pem"\n[status]\nsource = "crl"\npath = "../crl.pem"\n', "status.unissued"),
    ("", 'ca_cert = "../ca.pem"\n[status]\nsource = "crl"\npath = "../crl.pem"\nunissued = "maybe"\n',
     "status.unissued"),
    ("", 'ca_cert = "../ca.pem"\n[status]\nsource = "index"\npath = "../index.txt"\nunissued = "good"\n',
     "status.unissued"),
    ("", 'ca_cert = "../ca.pem"\n[status]\nsource = "ldap"\npath = "../index.txt"\n', "status.source"),
    ("", 'ca_cert = "../ca.pem"\n[status]\nsource = "index"\npath = "../nope.txt"\n', "status.path"),
    ("", 'ca_cert = "../index.txt"\n[status]\nsource = "index"\npath = "../index.txt"\n', "ca_cert"),
    ("", 'ca_cert = "../ca.pem"\n', "status"),
    ("", 'ca_cert = "../ca.pem"\nextra = 1\n[status]\nsource = "index"\npath = "../index.txt"\n', "extra"),
])
def test_errors_name_file_and_key(tmp_path: Path, ca: TestCA, frontend: str, cafile: str | None,
                                  key: str) -> None:
    path = setup(tmp_path, ca, frontend, cafile)
    with pytest.raises(ConfigError) as e:
        load_frontend_config(path)
    assert e.value.key == key, str(e.value)
    expected_file = path if cafile is None else tmp_path / "ca.d" / "one.toml"
    assert e.value.file == str(expected_file)


def test_metrics_address(tmp_path: Path, ca: TestCA) -> None:
    assert load_frontend_config(setup(tmp_path, ca)).metrics.address is None  # off by default
    cfg = load_frontend_config(setup(tmp_path, ca, '[metrics]\naddress = "[::1]:9102"\n'))
    assert cfg.metrics.address == "[::1]:9102"


def test_workers_range(tmp_path: Path, ca: TestCA) -> None:
    for n in (1, MAX_WORKERS):
        assert load_frontend_config(setup(tmp_path, ca, f"[listen]\nworkers = {n}\n")).listen.workers == n
    with pytest.raises(ConfigError) as e:
        load_frontend_config(setup(tmp_path, ca, "[listen]\nworkers = 300\n"))
    assert str(e.value).endswith("listen.workers: must be at most 256, not 300")


@pytest.mark.parametrize("cpus,workers", [(1, 1), (2, 2), (64, 64), (300, MAX_WORKERS)])
def test_default_workers_is_one_per_usable_cpu(monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)))
    assert default_workers() == workers


def test_empty_ca_dir(tmp_path: Path, ca: TestCA) -> None:
    path = setup(tmp_path, ca)
    (tmp_path / "ca.d" / "one.toml").unlink()
    with pytest.raises(ConfigError) as e:
        load_frontend_config(path)
    assert e.value.key == "ca_dir"


def test_sighup_during_start_up_is_ignored(tmp_path: Path) -> None:
    # A SIGHUP (e.g. a logrotate or a reload sent too early) while the frontend loads its
    # configuration and status data must not kill it: it is ignored until the handler is in place.
    import subprocess
    import sys

    code = (
        "import os, signal, sys\n"
        "import frontend.__main__ as m\n"
        "from shared.config import ConfigError\n"
        "def load(path):\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    raise ConfigError(path, 'ca_dir', 'still alive after SIGHUP')\n"
        "m.load_frontend_config = load\n"
        "sys.exit(m.main(['--config', 'x.toml']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[3], check=False)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "still alive after SIGHUP" in r.stderr


INDEX_CA = 'ca_cert = "../ca.pem"\n[status]\nsource = "index"\npath = "../index.txt"\n'
CRL_CA = 'ca_cert = "../ca.pem"\n[status]\nsource = "crl"\npath = "../crl.pem"\nunissued = "unknown"\n'


def test_max_shrink_default(tmp_path: Path, ca: TestCA) -> None:
    cfg = load_frontend_config(setup(tmp_path, ca))
    assert cfg.cas[0].status.max_shrink == 0.1


@pytest.mark.parametrize("text,share", [("25%", 0.25), ("0%", 0.0), ("100%", 1.0), ("2.5%", 0.025),
                                        (" 10% ", 0.1)])
def test_max_shrink_values(tmp_path: Path, ca: TestCA, text: str, share: float) -> None:
    cfg = load_frontend_config(setup(tmp_path, ca, cafile=INDEX_CA + f'max_shrink = "{text}"\n'))
    assert cfg.cas[0].status.max_shrink == share
    write(tmp_path / "issued.txt", "10\n")
    crl = CRL_CA + f'issued_serials = "../issued.txt"\nmax_shrink = "{text}"\n'
    assert load_frontend_config(setup(tmp_path, ca, cafile=crl)).cas[0].status.max_shrink == share


@pytest.mark.parametrize("value", ['"10"', "0.1", "10", '"101%"', '"-1%"', '"ten%"', '"10 %"', '""'])
def test_max_shrink_errors(tmp_path: Path, ca: TestCA, value: str) -> None:
    path = setup(tmp_path, ca, cafile=INDEX_CA + f"max_shrink = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_frontend_config(path)
    assert e.value.key == "status.max_shrink" and e.value.file == str(tmp_path / "ca.d" / "one.toml")


def test_max_shrink_needs_something_to_shrink(tmp_path: Path, ca: TestCA) -> None:
    """A CRL may shrink (expired entries drop off): max_shrink is for index.txt and issued_serials."""
    with pytest.raises(ConfigError) as e:
        load_frontend_config(setup(tmp_path, ca, cafile=CRL_CA + 'max_shrink = "10%"\n'))
    assert e.value.key == "status.max_shrink" and "issued_serials" in str(e.value)


def test_default_index_validity_meets_the_baseline_requirements(tmp_path: Path, ca: TestCA) -> None:
    """BR 4.9.10: 8 h <= nextUpdate - thisUpdate + 1 s <= 10 d; and the signer's default admits it, and
    the longest CRL window the BRs allow (10 days, 4.9.7)."""
    from shared.status.base import br_compliant
    from signer.config import PolicyConfig

    validity = load_frontend_config(setup(tmp_path, ca)).cas[0].status.validity
    assert br_compliant(validity)
    assert PolicyConfig().max_validity >= validity
    assert PolicyConfig().max_validity >= timedelta(days=10)
