"""Real parts: a SoftHSM token in a temp dir, the demo PKI, and real ocsp-signer / ocsp-frontend processes.

Nothing here sleeps to synchronise: processes are waited on through their readiness
endpoints (the signer's Health RPC, the frontend's /-/health), with deadlines.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll a readiness condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


@dataclass
class Process:
    """A child process of the suite, started by argv and stopped with SIGTERM."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    _logf: object = field(default=None, repr=False)

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self._logf = open(self.log, "ab")  # noqa: SIM115 - open for the child's life, closed in stop()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._logf, stderr=subprocess.STDOUT,
                                     cwd=ROOT)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            return self.ready()

        try:
            wait_until(up, timeout, f"{self.name} to be ready")
        except BaseException:
            self.stop()  # never left running behind a failed start (its fixture's teardown will not run)
            raise

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self._logf:
            self._logf.close()  # type: ignore[attr-defined]
        return rc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Demo:
    dir: Path
    env: dict[str, str]
    http_port: int
    signer_address: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([tool("ocspctl"), *args], env=self.env, capture_output=True, text=True,
                                cwd=ROOT, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"ocspctl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def softhsm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM is not installed: run the tests through `make test`")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = str(conf)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def one_worker(frontend_toml: Path) -> None:
    """Pin the frontend of ``frontend_toml`` (a demo's, which leaves ``[listen] workers`` at its default,
    one per core) to one process: the suite's frontends, and those made from their configs
    (private_stack.demo_config), each count their connections, cache and log lines as one process does.
    tests/integration/test_frontend_workers.py sets ``workers`` itself."""
    text = frontend_toml.read_text()
    assert "\n[listen]\n" in text and "workers =" not in text, text
    frontend_toml.write_text(text.replace("\n[listen]\n", "\n[listen]\nworkers = 1\n", 1))


def one_signer_worker(signer_toml: Path) -> None:
    """Pin the signer of ``signer_toml`` (a demo's, which leaves ``[signer] workers`` at its default, one
    per core) to one process: the suite's signers, and those made from their configs, each write one
    audit chain (writer_id as configured) and log as one process does.
    tests/integration/test_signer_workers.py runs several."""
    text = signer_toml.read_text()
    assert "\n[signer]\n" not in text and "\n[listen]\n" in text, text
    # Before the first table, so that text appended to the file still lands in the demo's last table.
    signer_toml.write_text(text.replace("\n[listen]\n", "\n[signer]\nworkers = 1\n\n[listen]\n", 1))


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory, softhsm_env: dict[str, str]) -> Demo:
    d = tmp_path_factory.mktemp("demo")
    port = free_port()
    address = f"unix:{d / 'run' / 'signer.sock'}"
    demo = Demo(dir=d, env=softhsm_env, http_port=port, signer_address=address)
    demo.ctl("demo", "setup", "--dir", str(d), "--http-port", str(port), "--signer-address", address)
    one_worker(demo.path("etc", "frontend.toml"))
    one_signer_worker(demo.path("etc", "signer.toml"))
    return demo


def signer_healthy(address: str, frontend_toml: Path | None = None) -> bool:
    """Health answers serving; over mTLS as the frontend when its frontend.toml has tls keys."""
    from signer.ctl.demo.serve import signer_serving

    return signer_serving(address, frontend_toml)


def http_healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/-/health")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@pytest.fixture(scope="session")
def signer(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    logs = tmp_path_factory.mktemp("logs")
    p = Process("ocsp-signer", [tool("ocsp-signer"), "--config", str(demo.path("etc", "signer.toml"))],
                demo.env, lambda: signer_healthy(demo.signer_address, demo.path("etc", "frontend.toml")),
                logs / "signer.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def frontend(demo: Demo, signer: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    logs = tmp_path_factory.mktemp("logs")
    p = Process("ocsp-frontend", [tool("ocsp-frontend"), "--config", str(demo.path("etc", "frontend.toml"))],
                demo.env, lambda: http_healthy(demo.http_port), logs / "frontend.log")
    p.start()
    yield p
    p.stop()
