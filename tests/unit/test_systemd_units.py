"""etc/systemd/*.service: the signer's unit lets it write every path the shipped configuration makes
it write (ProtectSystem=strict makes everything else read-only), and systemd accepts both units."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "etc" / "systemd"
SIGNER_UNIT = UNITS / "ocsp-signer.service"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``[Service]`` key -> every value given (systemd keys may repeat, and hold space-separated lists)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).extend(value.split())
    return settings


def writable_roots(settings: dict[str, list[str]]) -> list[PurePosixPath]:
    roots = [PurePosixPath("/var/lib") / d for d in settings.get("StateDirectory", [])]
    roots += [PurePosixPath("/run") / d for d in settings.get("RuntimeDirectory", [])]
    roots += [PurePosixPath(p.lstrip("-+")) for p in settings.get("ReadWritePaths", [])]
    return roots


def covered(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def config_file() -> Path:
    """Where the unit reads signer.toml: ExecStart's --config."""
    (exec_start,) = [v for v in unit_settings(SIGNER_UNIT)["ExecStart"] if v.endswith(".toml")]
    return Path(exec_start)


def signer_writes() -> dict[str, PurePosixPath]:
    """What the signer writes with the shipped example configuration, installed where the unit reads it
    (etc/signer.toml as /etc/ocsp/signer.toml, etc/ca.d/example.toml in its ca_dir)."""
    conf = config_file()
    signer = tomllib.loads((ROOT / "etc" / "signer.toml").read_text())
    example = tomllib.loads((ROOT / "etc" / "ca.d" / "example.toml").read_text())
    signer_text = (ROOT / "etc" / "signer.toml").read_text()
    # The documented sockets: the admin socket (etc/signer.toml) and a unix listen address (the unit).
    (admin_socket,) = re.findall(r'(?m)^# socket = "([^"]+)"', signer_text)
    (unix_listen,) = set(re.findall(r"unix:(/run/\S+\.sock)", SIGNER_UNIT.read_text()))
    ca_dir = PurePosixPath(conf.parent) / signer["ca_dir"]
    return {
        "audit.dir (the log, its lock)": PurePosixPath(signer["audit"]["dir"]) / "audit-w-00000001-20260101.jsonl",
        # write_atomic puts a temporary file next to the certificate: its directory must be writable.
        "responder.cert (ocspctl rotate)": PurePosixPath(example["responder"]["cert"]).parent / ".tmp",
        "the CA file (ocspctl rotate --key-label)": ca_dir / ".example.toml.tmp",
        "admin.socket": PurePosixPath(admin_socket),
        "unix listen.address": PurePosixPath(unix_listen),
        "SoftHSM's token files (Debian)": PurePosixPath("/var/lib/softhsm/tokens/x/token.object"),
    }


def test_signer_unit_covers_every_path_the_signer_writes() -> None:
    settings = unit_settings(SIGNER_UNIT)
    assert settings["ProtectSystem"] == ["strict"]  # else this test would prove nothing
    roots = writable_roots(settings)
    uncovered = {what: str(p) for what, p in signer_writes().items() if not covered(p, roots)}
    assert uncovered == {}, f"not writable under {SIGNER_UNIT.name} ({', '.join(map(str, roots))})"


def test_signer_state_directories_are_private() -> None:
    settings = unit_settings(SIGNER_UNIT)
    assert settings["StateDirectoryMode"] in (["0700"], ["0750"])
    assert settings["User"] == ["ocsp-signer"]  # StateDirectory= hands the directories to this user


def test_readme_install_uses_the_paths_of_the_unit_and_the_example() -> None:
    readme = (ROOT / "README.md").read_text()
    example = tomllib.loads((ROOT / "etc" / "ca.d" / "example.toml").read_text())
    signer = tomllib.loads((ROOT / "etc" / "signer.toml").read_text())
    for path in (example["responder"]["cert"], signer["audit"]["dir"], str(config_file())):
        assert path in readme, path
    assert "StateDirectory=ocsp-signer/audit ocsp-signer/responders" in SIGNER_UNIT.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["ocsp-signer.service", "ocsp-frontend.service"])
def test_systemd_accepts_the_unit(unit: str, tmp_path: Path) -> None:
    """systemd-analyze verify: no unknown key, no value it cannot parse. The program is not installed
    here, so ExecStart= points at /bin/true for the check (verify also checks it is executable)."""
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", (UNITS / unit).read_text())
    copy = tmp_path / unit
    copy.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_frontend_unit_stops_and_reloads_through_the_supervisor() -> None:
    """With listen.workers > 1 the main PID supervises the workers: SIGTERM and SIGHUP go to it alone
    (it passes them on; a worker getting SIGTERM from systemd as well would race its supervisor), and
    only what outlives TimeoutStopSec= is killed, control group and all."""
    settings = unit_settings(UNITS / "ocsp-frontend.service")
    assert settings["Type"] == ["exec"]
    assert settings["KillMode"] == ["mixed"] and settings["KillSignal"] == ["SIGTERM"]
    assert settings["ExecReload"] == ["/bin/kill", "-HUP", "$MAINPID"]
    # The supervisor kills a worker that has not stopped shutdown_grace + STOP_MARGIN into a stop;
    # systemd's own deadline comes after that, for the default shutdown_grace.
    from frontend.config import ListenConfig
    from frontend.workers import STOP_MARGIN

    (stop,) = settings["TimeoutStopSec"]
    assert int(stop) > ListenConfig().shutdown_grace + STOP_MARGIN
