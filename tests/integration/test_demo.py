"""The demo as an operator runs it: `make run PORT=N`, the `ocspctl demo ...` commands it prints pasted
into a plain shell (another directory, no SOFTHSM2_CONF), and `demo serve` when its ports are taken.
Real processes, a SoftHSM token store of the test's own laid out as make lays out var/.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port, tool, wait_until

pytestmark = pytest.mark.integration


@dataclass
class MakeDemo:
    var: Path  # what make calls $(VAR)
    http_port: int
    signer_address: str
    setup_output: str

    @property
    def dir(self) -> Path:
        return self.var / "demo"

    @property
    def conf(self) -> Path:
        return self.var / "softhsm2.conf"


def plain_env(**extra: str) -> dict[str, str]:
    """A plain shell's environment: no SOFTHSM2_CONF, no make variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOFTHSM2_CONF", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PORT", "VAR")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def empty_store(base: Path) -> Path:
    """Another SoftHSM token store (a configuration and an empty token directory)."""
    (base / "tokens").mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    return conf


def system_token_dir() -> Path | None:
    try:
        for line in Path("/etc/softhsm/softhsm2.conf").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "directories.tokendir":
                return Path(value.strip())
    except OSError:
        pass
    return None


@pytest.fixture
def system_store_untouched() -> Iterator[None]:
    """Commands run without SOFTHSM2_CONF here: SoftHSM's default store must not change (and if a bug
    made a token there, it is removed again and the test fails)."""
    tokens = system_token_dir()
    before = set(os.listdir(tokens)) if tokens is not None and tokens.is_dir() else set()
    yield
    after = set(os.listdir(tokens)) if tokens is not None and tokens.is_dir() else set()
    for name in after - before:
        shutil.rmtree(tokens / name, ignore_errors=True)  # type: ignore[operator]
    assert after == before, f"a token appeared in the system store {tokens}: {sorted(after - before)}"


def ctl(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ocspctl"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> MakeDemo:
    """A demo set up on a port and signer address that are not the defaults, its token store where
    `make softhsm` puts it (the var/ layout, so `make run VAR=...` finds both)."""
    var = tmp_path_factory.mktemp("var")
    (var / "softhsm" / "tokens").mkdir(parents=True)
    template = (ROOT / "softhsm" / "softhsm2.conf.in").read_text()
    (var / "softhsm2.conf").write_text(template.replace("@TOKENDIR@", str(var / "softhsm" / "tokens")))
    port, address = free_port(), f"127.0.0.1:{free_port()}"
    r = ctl("demo", "setup", "--dir", str(var / "demo"), "--http-port", str(port), "--signer-address", address,
            env=plain_env(SOFTHSM2_CONF=str(var / "softhsm2.conf")), cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return MakeDemo(var, port, address, r.stdout)


def snapshot(d: Path) -> dict[str, bytes]:
    """What setup made (the PKI, configs, PINs), not what serving writes (audit log, sockets)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.relative_to(d).parts[0] not in ("audit", "run", "softhsm")}


class Output:
    """A child's stdout and stderr, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=lambda s=s, acc=acc: acc.extend(iter(s.readline, "")), daemon=True)
                        for s, acc in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def text(self) -> str:
        return "".join(self.out + self.err)

    def join(self) -> None:
        for t in self.threads:
            t.join(10)


def check_answers(url: str, d: Path) -> None:
    ca, leaf = d / "rsa-ca" / "ca.pem", d / "rsa-ca" / "leaf-revoked.pem"
    r = subprocess.run(["openssl", "ocsp", "-issuer", str(ca), "-cert", str(leaf), "-url", url, "-CAfile", str(ca)],
                       capture_output=True, text=True, timeout=30, check=False)
    assert "Response verify OK" in r.stdout + r.stderr and "leaf-revoked.pem: revoked" in r.stdout, r.stdout + r.stderr


def serve_until_ready(argv: list[str], env: dict[str, str], cwd: Path, *, group: bool = False,
                      after_setup: Callable[[list[str]], None] | None = None
                      ) -> tuple[subprocess.Popen[str], Output]:
    """Start ``argv`` and wait until it prints its commands (it is ready). ``after_setup``: called with
    the output as soon as `demo setup` printed its summary, before anything is served."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=group)
    output = Output(proc)

    def line(prefix: str) -> Callable[[], bool]:
        def seen() -> bool:
            assert proc.poll() is None, output.text()
            return any(text.startswith(prefix) for text in output.out)
        return seen

    try:
        if after_setup is not None:
            wait_until(line("demo PKI "), 300, "demo setup")
            after_setup(list(output.out))
        wait_until(line("try:"), 300, "the demo to be ready")
    except BaseException:
        stop(proc, group=group)
        raise
    return proc, output


def stop(proc: subprocess.Popen[str], *, group: bool = False) -> int:
    """Ctrl-C: SIGINT to the process (group, as a terminal sends it to make and its children)."""
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- make run PORT=N ------------------------------------------------------------------------------------


def test_make_run_serves_on_the_port_the_demo_was_set_up_with(made: MakeDemo) -> None:
    before = snapshot(made.dir)
    def nothing_reissued(out: list[str]) -> None:
        assert any("already complete, nothing changed" in line for line in out), "".join(out)

    proc, output = serve_until_ready(["make", "-C", str(ROOT), "--no-print-directory", "run", f"VAR={made.var}",
                                      f"PORT={made.http_port}"], plain_env(), ROOT, group=True,
                                     after_setup=nothing_reissued)
    try:
        assert any(f"ocsp-frontend on http://127.0.0.1:{made.http_port}/" in line for line in output.out)
        check_answers(f"http://127.0.0.1:{made.http_port}", made.dir)
    finally:
        stop(proc, group=True)
        output.join()
    assert snapshot(made.dir) == before  # nothing re-issued
    assert port_free(made.http_port)


# -- the demo's own token, wherever its commands run ------------------------------------------------------


def test_setup_records_its_token_store(made: MakeDemo) -> None:
    record = made.dir / "softhsm2.conf"
    assert record.is_symlink() and record.resolve() == made.conf.resolve()


def test_printed_commands_use_the_demo_token_from_anywhere(made: MakeDemo, tmp_path: Path,
                                                          system_store_untouched: None) -> None:
    """The `next:` command setup printed, pasted into a plain shell in another directory: with no
    SOFTHSM2_CONF, and with one naming another store. Neither re-keys the demo or touches that store."""
    (next_line,) = [line for line in made.setup_output.splitlines() if line.startswith("next: ")]
    argv = next_line.removeprefix("next: ").split()
    assert Path(argv[0]).is_absolute() and argv[1:3] == ["demo", "serve"]
    other = empty_store(tmp_path / "other-store")
    before = snapshot(made.dir)
    setup = [argv[0], "demo", "setup", "--dir", str(made.dir)]  # the command make runs first
    for env in (plain_env(), plain_env(SOFTHSM2_CONF=str(other))):
        r = subprocess.run(setup, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0 and "nothing changed" in r.stdout, r.stdout + r.stderr
        if "SOFTHSM2_CONF" in env:
            assert f"using the demo's SoftHSM token store {made.dir / 'softhsm2.conf'}" in r.stderr, r.stderr
    proc, output = serve_until_ready(argv, plain_env(SOFTHSM2_CONF=str(other)), Path("/"))
    try:
        check_answers(f"http://127.0.0.1:{made.http_port}", made.dir)
    finally:
        assert stop(proc) == 0, output.text()
        output.join()
    assert snapshot(made.dir) == before
    assert list((tmp_path / "other-store" / "tokens").iterdir()) == []
    verify = subprocess.run([argv[0], "audit", "verify", *map(str, sorted((made.dir / "audit").glob("*.jsonl"))),
                             "--pubkey", str(made.dir / "audit-key.pem")], env=plain_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_set_up_demo_is_not_rekeyed_in_another_store(made: MakeDemo, tmp_path: Path) -> None:
    """A demo directory without a record (made by an older ocspctl) run against another store: refused,
    nothing made there, the demo's keys and audit key file kept."""
    legacy = tmp_path / "legacy"
    shutil.copytree(made.dir, legacy, ignore=shutil.ignore_patterns("audit", "run"))
    (legacy / "softhsm2.conf").unlink()
    other = empty_store(tmp_path / "other-store")
    before = snapshot(legacy)
    r = ctl("demo", "setup", "--dir", str(legacy), env=plain_env(SOFTHSM2_CONF=str(other)), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "was set up with another SoftHSM token store" in r.stderr and str(other) in r.stderr, r.stderr
    assert list((tmp_path / "other-store" / "tokens").iterdir()) == []
    assert snapshot(legacy) == before


def test_a_demo_without_record_and_without_softhsm2_conf_is_refused(made: MakeDemo, tmp_path: Path,
                                                                   system_store_untouched: None) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(made.dir, legacy, ignore=shutil.ignore_patterns("audit", "run"))
    (legacy / "softhsm2.conf").unlink()
    for command in ("serve", "setup", "reissue-responder"):
        extra = ["--ca", "rsa"] if command == "reissue-responder" else []
        r = ctl("demo", command, "--dir", str(legacy), *extra, env=plain_env(), cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "does not record which SoftHSM token store" in r.stderr, r.stderr
        assert f"SOFTHSM2_CONF=/path/to/softhsm2.conf {tool('ocspctl')} demo setup --dir {legacy}" in r.stderr


# -- demo serve: its own children, on free ports ---------------------------------------------------------


class Healthy(http.server.BaseHTTPRequestHandler):
    """Another program on the demo's port that answers the health check, as another demo would."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_serve_refuses_a_taken_http_port(made: MakeDemo, tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", made.http_port), Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        r = subprocess.run([tool("ocspctl"), "demo", "serve", "--dir", str(made.dir)], env=plain_env(),
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "try:" not in r.stdout and "ocsp-frontend on" not in r.stdout, r.stdout
    assert f"cannot listen on 127.0.0.1:{made.http_port} for the demo frontend: Address already in use" in r.stderr
    assert f"demo setup --dir {made.dir} --http-port N" in r.stderr, r.stderr


def test_serve_refuses_a_taken_signer_address(made: MakeDemo, tmp_path: Path) -> None:
    host, _, port = made.signer_address.rpartition(":")
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        r = subprocess.run([tool("ocspctl"), "demo", "serve", "--dir", str(made.dir)], env=plain_env(),
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1 and "try:" not in r.stdout, r.stdout + r.stderr
    assert f"cannot listen on the demo signer's address {made.signer_address}: Address already in use" in r.stderr


def test_serve_refuses_another_port_than_the_demo_was_set_up_with(made: MakeDemo, tmp_path: Path) -> None:
    other = made.http_port + 1 if made.http_port < 65535 else made.http_port - 1
    r = ctl("demo", "serve", "--dir", str(made.dir), "--http-port", str(other), env=plain_env(), cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"is set up for port {made.http_port}, not {other}" in r.stderr
    assert f"demo setup --dir {made.dir} --http-port {other}" in r.stderr, r.stderr
