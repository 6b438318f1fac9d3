"""The signing-path benchmark of issue 10: this project against `openssl ocsp`, raw SoftHSM signing
and a bare uvloop server, in one run on the demo PKI, all HTTP rows under wrk (bench/wrk_load.py).

    make bench     # or: .venv/bin/python bench/signing_bench.py --demo var/demo [--quick]

Rows (wrk -t1 -c32; every nonce request carries 32 fresh random bytes, so every answer is signed):
  openssl ocsp P-256 / RSA-2048   one `openssl ocsp -port` process pinned to one core, the demo CA's
                                  status as index.txt, a software responder key signed by the demo CA
  project P-256 / RSA-2048        ocsp-signer + ocsp-frontend of the demo config (mTLS, audit log on),
                                  both pinned to one core, then unpinned (all cores)
  cache hit POST / GET            the same nonce-less request for demo-rsa's leaf-good, one core / all
  bare uvloop                     a fixed 1.4 KB body (bench/http_bench.py's server), one core, and
                                  one process per core (SO_REUSEPORT) for the all-cores rows
  raw SoftHSM P-256 / RSA         python-pkcs11 C_Sign in a loop in 1 and N processes (no HTTP)
Each HTTP row: a peak run, then a run held to about half of the peak rate (p50/p99 there). Server
CPU is utime+stime of the server processes (and their children) from /proc, never wrk's.
Writes bench/RESULTS.md and bench/results.png (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import REFERENCE_SERVER, free_port
from bench.signing_report import Row, write_plot, write_results
from bench.wrk_load import (
    Body,
    WrkResult,
    fixed_get,
    fixed_post,
    half_load,
    nonce_template,
    run_wrk,
    wait_listening,
)
from tests.integration.conftest import http_healthy, signer_healthy, wait_until

CAS = {"P-256": "ec-ca", "RSA-2048": "rsa-ca"}
KEY_LABELS = {"P-256": "demo-ec-responder", "RSA-2048": "demo-rsa-responder"}
PIN_CPU = str(os.cpu_count() - 1 if (os.cpu_count() or 1) > 1 else 0)  # wrk's thread lands elsewhere mostly


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- HTTP rows --------------------------------------------------------------------------------------

class Runner:
    """Runs the peak and half-load wrk runs of one row and collects Row values."""

    def __init__(self, connections: int, seconds: float, half_seconds: float) -> None:
        self.connections, self.seconds, self.half_seconds = connections, seconds, half_seconds
        self.rows: list[Row] = []
        self.profiles: dict[str, str] = {}
        self.profile = False

    def http_row(self, key: str, label: str, port: int, body: Body, pids: list[int], *,
                 check: bool = True, warmup: float = 1.0) -> tuple[WrkResult, WrkResult]:
        run_wrk(port, body, connections=self.connections, seconds=warmup, server_pids=pids, check=check)
        peak = run_wrk(port, body, connections=self.connections, seconds=self.seconds, server_pids=pids,
                       check=check)
        half = half_load(lambda delay_ms, seconds: run_wrk(
            port, body, connections=self.connections, seconds=seconds, server_pids=pids, delay_ms=delay_ms,
            check=check), peak, connections=self.connections, seconds=self.half_seconds)
        for r in (peak, half):
            if r.errors or (check and r.bad):
                log(f"  {label}: {r.errors} socket errors, {r.bad} answers not successful")
        row = Row(key=key, label=label, rps=peak.rps, cpu_us=peak.cpu_us, p50_ms=peak.p50_ms,
                  p99_ms=peak.p99_ms, half_rps=half.rps, half_p50_ms=half.p50_ms, half_p99_ms=half.p99_ms,
                  bad=peak.bad + half.bad + peak.errors + half.errors)
        self.rows.append(row)
        log(f"  {label:44} {row.rps:9.0f}/s {row.cpu_us:8.1f} µs  p99 peak {row.p99_ms:6.2f} ms, "
            f"at {row.half_rps:.0f}/s {row.half_p99_ms:6.2f} ms")
        return peak, half


# --- openssl ocsp -------------------------------------------------------------------------------------

def software_responder(demo: Path, ca_dir: str, kind: str, out: Path) -> tuple[Path, Path]:
    """A software responder key and certificate (EKU OCSPSigning) issued by the demo CA's key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((demo / ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((demo / ca_dir / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "P-256" else rsa.generate_private_key(65537, 2048)
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"openssl bench responder {kind}")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = out / f"openssl-{ca_dir}.pem", out / f"openssl-{ca_dir}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def openssl_index(demo: Path, ca_dir: str, out: Path) -> Path:
    """The CA's index.txt (demo-rsa has one; demo-ec's status is a CRL, so its leaf-good gets a line)."""
    from cryptography import x509

    index = out / f"index-{ca_dir}.txt"
    if (demo / ca_dir / "index.txt").exists():
        shutil.copy(demo / ca_dir / "index.txt", index)
    else:
        leaf = x509.load_pem_x509_certificate((demo / ca_dir / "leaf-good.pem").read_bytes())
        index.write_text(f"V\t{leaf.not_valid_after_utc:%y%m%d%H%M%SZ}\t\t{leaf.serial_number:X}\tunknown\t"
                         "/CN=leaf-good\n")
    (out / f"index-{ca_dir}.txt.attr").write_text("unique_subject = no\n")
    return index


@contextmanager
def openssl_server(demo: Path, ca_dir: str, files: tuple[Path, Path, Path]) -> Iterator[tuple[int, int]]:
    """A fresh `openssl ocsp -port` on one core; yields (pid, port). Readiness from `ss -ltn` only."""
    index, cert, key = files
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", PIN_CPU, "openssl", "ocsp", "-port", str(port), "-index", str(index),
                             "-CA", str(demo / ca_dir / "ca.pem"), "-rsigner", str(cert), "-rkey", str(key),
                             "-resp_key_id", "-ndays", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield proc.pid, port
    finally:
        stop(proc)


def openssl_answers(demo: Path, ca_dir: str, port: int, responder: Path) -> bool:
    """One real `openssl ocsp` client request (with its nonce): still alive, and the answer verifies."""
    out = subprocess.run(["openssl", "ocsp", "-issuer", str(demo / ca_dir / "ca.pem"), "-cert",
                          str(demo / ca_dir / "leaf-good.pem"), "-url", f"http://127.0.0.1:{port}/",
                          "-CAfile", str(demo / ca_dir / "ca.pem"), "-verify_other", str(responder),
                          "-timeout", "5"], capture_output=True, text=True, timeout=15, check=False)
    return ": good" in out.stdout and "Response verify OK" in (out.stdout + out.stderr)


def openssl_run(demo: Path, ca_dir: str, files: tuple[Path, Path, Path], body: Body, connections: int,
                seconds: float, delay_ms: float = 0.0) -> WrkResult:
    """One wrk run (``delay_ms``: wrk_load.half_load's pause) on a fresh openssl process, with
    one real `openssl ocsp` client request a second before the run ends: the server still answered
    then (it is not asked after the run: wrk closes its idle keep-alive connections at the end, which
    is the trap, so the process is thrown away instead)."""
    with openssl_server(demo, ca_dir, files) as (pid, port):
        alive: list[bool] = []
        probe = threading.Timer(max(seconds - 1.0, 0.5),
                                lambda: alive.append(openssl_answers(demo, ca_dir, port, files[1])))
        probe.start()
        result = run_wrk(port, body, connections=connections, seconds=seconds, server_pids=[pid],
                         delay_ms=delay_ms)
        probe.join()
    if alive != [True]:
        raise RuntimeError(f"openssl ocsp ({ca_dir}) did not answer a client request during the run")
    return result


def openssl_rows(runner: Runner, demo: Path, tmp: Path) -> None:
    for kind, ca_dir in CAS.items():
        cert, key = software_responder(demo, ca_dir, kind, tmp)
        files = (openssl_index(demo, ca_dir, tmp), cert, key)
        body = nonce_template(demo / ca_dir / "leaf-good.pem", demo / ca_dir / "ca.pem")
        peak = openssl_run(demo, ca_dir, files, body, runner.connections, runner.seconds)
        # openssl ocsp closes the connection after each answer, and wrk's delay() applies only between
        # requests of a kept-alive connection: the low-load run is one connection (-c1) instead
        half = openssl_run(demo, ca_dir, files, body, 1, runner.half_seconds)
        row = Row(key=f"openssl {kind}", label=f"openssl ocsp {kind}, 1 process on 1 core", rps=peak.rps,
                  cpu_us=peak.cpu_us, p50_ms=peak.p50_ms, p99_ms=peak.p99_ms, half_rps=half.rps,
                  half_p50_ms=half.p50_ms, half_p99_ms=half.p99_ms,
                  bad=peak.bad + half.bad + peak.errors + half.errors)
        runner.rows.append(row)
        log(f"  {row.label:44} {row.rps:9.0f}/s {row.cpu_us:8.1f} µs  p99 at {row.half_rps:.0f}/s "
            f"{row.half_p99_ms:.2f} ms")


# --- this project ---------------------------------------------------------------------------------

def stack_configs(demo: Path, tmp: Path) -> tuple[Path, Path, int, str]:
    """The demo's signer.toml and frontend.toml on free ports, with their own audit dir and admin socket."""
    etc = demo / "etc"
    s_text, f_text = (etc / "signer.toml").read_text(), (etc / "frontend.toml").read_text()
    scfg, fcfg = tomllib.loads(s_text), tomllib.loads(f_text)
    address, port = f"127.0.0.1:{free_port()}", free_port()
    s_text = s_text.replace(f'"{scfg["listen"]["address"]}"', f'"{address}"', 1)
    s_text = s_text.replace(f'"{scfg["audit"]["dir"]}"', f'"{tmp}/audit"', 1)
    if "socket" in scfg.get("admin", {}):
        s_text = s_text.replace(f'"{scfg["admin"]["socket"]}"', f'"{tmp}/admin.sock"', 1)
    f_text = f_text.replace(f'"{fcfg["signer"]["address"]}"', f'"{address}"', 1)
    f_text = f_text.replace(f"port = {fcfg['listen']['port']}\n", f"port = {port}\n", 1)
    signer_toml, frontend_toml = tmp / "signer.toml", tmp / "frontend.toml"
    signer_toml.write_text(s_text)
    frontend_toml.write_text(f_text)
    return signer_toml, frontend_toml, port, address


@contextmanager
def project_stack(demo: Path, tmp: Path, pin: str | None) -> Iterator[tuple[int, int, int]]:
    """ocsp-signer and ocsp-frontend of the demo config (``pin``: both on that core); yields
    (signer pid, frontend pid, HTTP port)."""
    bindir = Path(sys.executable).parent
    signer_toml, frontend_toml, port, address = stack_configs(demo, tmp)
    env = dict(os.environ, SOFTHSM2_CONF=str(demo / "softhsm2.conf"))
    prefix = ["taskset", "-c", pin] if pin is not None else []
    procs = []
    try:
        signer = subprocess.Popen(prefix + [str(bindir / "ocsp-signer"), "--config", str(signer_toml)], env=env,
                                  stderr=subprocess.DEVNULL)
        procs.append(signer)
        wait_until(lambda: signer_healthy(address, frontend_toml), 60, "signer")
        frontend = subprocess.Popen(prefix + [str(bindir / "ocsp-frontend"), "--config", str(frontend_toml)],
                                    env=env, stderr=subprocess.DEVNULL)
        procs.append(frontend)
        wait_until(lambda: http_healthy(port), 60, "frontend")
        yield signer.pid, frontend.pid, port
    finally:
        for p in reversed(procs):
            stop(p)


def project_rows(runner: Runner, demo: Path, tmp: Path) -> None:
    hit = (demo / "rsa-ca" / "leaf-good.pem", demo / "rsa-ca" / "ca.pem")
    for where, pin in (("1 core", PIN_CPU), ("all cores", None)):
        run_dir = tmp / where.replace(" ", "-")
        run_dir.mkdir()
        with project_stack(demo, run_dir, pin) as (signer, frontend, port):
            for kind, ca_dir in CAS.items():
                body = nonce_template(demo / ca_dir / "leaf-good.pem", demo / ca_dir / "ca.pem")
                runner.http_row(f"project {kind} {where}", f"this project {kind}, {where}", port, body,
                                [signer, frontend])
                if runner.profile and kind == "P-256" and pin is None:
                    profile_run(runner, port, body, {"ocsp-signer": signer, "ocsp-frontend": frontend}, run_dir)
            runner.http_row(f"hit POST {where}", f"cache hit POST, {where}", port, fixed_post(*hit),
                            [signer, frontend])
            runner.http_row(f"hit GET {where}", f"cache hit GET, {where}", port, fixed_get(*hit),
                            [signer, frontend])


def profile_run(runner: Runner, port: int, body: Body, pids: dict[str, int], tmp: Path) -> None:
    """py-spy on each server process during one more wrk run (not a measured one: sampling costs)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        log("  (no py-spy in the venv: no profile)")
        return
    seconds = max(round(runner.seconds / 2), 2)
    # --subprocesses: with [listen] workers the frontend's pid is a supervisor that serves nothing.
    procs = {name: subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw",
                                     "--nonblocking", "--subprocesses", "-o", str(tmp / f"{name}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in pids.items()}
    run_wrk(port, body, connections=runner.connections, seconds=seconds + 1, server_pids=list(pids.values()))
    for name, proc in procs.items():
        proc.wait(30)
        out = tmp / f"{name}.txt"
        if out.exists():
            runner.profiles[name] = out.read_text()


def uvloop_row(runner: Runner, demo: Path) -> None:
    """The bare uvloop server: one process pinned to one core (the reference of the one-core rows),
    then one process per core on one port (SO_REUSEPORT), unpinned, as the frontend's workers run
    (the reference of the all-cores rows: those share both cores with wrk, which costs a server
    context switches and smaller reads per request whatever it does; see RESULTS.md)."""
    body = fixed_post(demo / "rsa-ca" / "leaf-good.pem", demo / "rsa-ca" / "ca.pem")
    n = os.cpu_count() or 1
    for key, label, commands in (
            ("bare uvloop", "bare uvloop, fixed body, 1 core",
             [["taskset", "-c", PIN_CPU, sys.executable, "-c", REFERENCE_SERVER]]),
            ("bare uvloop all cores", f"bare uvloop, fixed body, {n} processes, all cores",
             [[sys.executable, "-c", REFERENCE_SERVER]] * n)):
        port = free_port()
        extra = ["reuse"] if len(commands) > 1 else []
        procs = [subprocess.Popen([*c, str(port), *extra], stdout=subprocess.PIPE) for c in commands]
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            runner.http_row(key, label, port, body, [p.pid for p in procs], check=False)
        finally:
            for proc in procs:
                stop(proc)


# --- raw SoftHSM --------------------------------------------------------------------------------------

RAW_SIGNER = r"""
import hashlib, sys, time
import pkcs11, pkcs11.exceptions
from pkcs11 import Mechanism, ObjectClass
module, label, pin, key_label, kind, start, end = sys.argv[1:8]
for attempt in range(20):   # SoftHSM's file store can fail a slot listing while another process opens it
    try:
        token = pkcs11.lib(module).get_token(token_label=label)
        session = token.open(user_pin=pin)
        break
    except pkcs11.exceptions.GeneralError:
        time.sleep(0.05 * (attempt + 1))
with session:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
    tbs = bytes(range(256)) * 4   # about a ResponseData's size
    if kind == "P-256":
        def sign(): return key.sign(hashlib.sha256(tbs).digest(), mechanism=Mechanism.ECDSA)
    else:
        def sign(): return key.sign(tbs, mechanism=Mechanism.SHA256_RSA_PKCS)
    sign()
    while time.time() < float(start):
        time.sleep(0.001)
    c0, n = time.process_time(), 0
    while time.time() < float(end):
        sign()
        n += 1
    print(n, time.process_time() - c0, flush=True)
"""


def raw_softhsm(demo: Path, kind: str, processes: int, seconds: float) -> tuple[float, float]:
    """Signatures/s of ``processes`` python-pkcs11 loops on the demo token's key, and CPU µs per
    signature (the loops' own process time)."""
    scfg = tomllib.loads((demo / "etc" / "signer.toml").read_text())
    token = scfg["token"]
    pin = Path(token["pin_file"]).read_text().strip()
    env = dict(os.environ, SOFTHSM2_CONF=str(demo / "softhsm2.conf"))
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", RAW_SIGNER, token["module"], token["label"], pin,
                               KEY_LABELS[kind], kind, str(start), str(start + seconds)],
                              stdout=subprocess.PIPE, env=env) for _ in range(processes)]
    total, cpu = 0, 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 60)
        n, c = out.split()
        total, cpu = total + int(n), cpu + float(c)
    return total / seconds, cpu / max(total, 1) * 1e6


def raw_rows(runner: Runner, demo: Path, seconds: float) -> None:
    n = os.cpu_count() or 1
    for kind in CAS:
        for procs in sorted({1, n}):
            rps, cpu_us = raw_softhsm(demo, kind, procs, seconds)
            runner.rows.append(Row(key=f"raw {kind} {procs}", label=f"raw SoftHSM {kind}, {procs} process(es)",
                                   rps=rps, cpu_us=cpu_us))
            log(f"  raw SoftHSM {kind}, {procs} process(es): {rps:9.0f}/s {cpu_us:8.1f} µs")


def git_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True, text=True,
                         check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "frontend", "signer", "shared"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return (out or "unknown") + (" (with uncommitted changes to the servers)" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--quick", action="store_true", help="short runs (2 s), for a check; not for RESULTS.md")
    ap.add_argument("--seconds", type=float, default=10.0, help="each peak run (default 10)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the P-256 row")
    ap.add_argument("--out", type=Path, default=ROOT / "bench", help="where RESULTS.md and results.png go")
    args = ap.parse_args()
    demo: Path = args.demo.resolve()
    if not (demo / "etc" / "frontend.toml").exists():
        print(f"no demo PKI in {demo}: run `ocspctl demo setup --dir {demo}` first", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; `make bench` does)", file=sys.stderr)
        return 2
    seconds = 2.0 if args.quick else args.seconds
    runner = Runner(args.connections, seconds, max(seconds / 2, 2.0))
    runner.profile = not args.no_profile
    started, load_before = datetime.now(UTC), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="signing-bench-") as tmp:
        log("openssl ocsp:")
        openssl_rows(runner, demo, Path(tmp))
        log("this project:")
        project_rows(runner, demo, Path(tmp))
        log("references:")
        uvloop_row(runner, demo)
        raw_rows(runner, demo, seconds)
    command = " ".join(["bench/signing_bench.py"] + sys.argv[1:])
    md = write_results(args.out / "RESULTS.md", runner.rows, started=started, command=command,
                       seconds=seconds, half_seconds=runner.half_seconds, connections=args.connections,
                       pin_cpu=PIN_CPU, load=(load_before, os.getloadavg()[0]), commit=git_commit(),
                       profiles=runner.profiles)
    write_plot(args.out / "results.png", runner.rows, started)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
