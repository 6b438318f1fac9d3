"""Soak: a real signer and a real frontend (two workers each) on a demo PKI of their own, under mixed
load for a while, with responder rotations and status data changes on the way; then a table.

    make soak                                   # SOAK_SECONDS=180
    .venv/bin/python bench/soak.py --seconds 180 [--keep]

Everything runs on this machine: the signer on a unix socket, the frontend on 127.0.0.1, the clients
in this process (bench/soak_load.py). The load: --clients keep-alive clients sending valid requests
(POST and GET, with and without a nonce, SHA-1 and SHA-256 CertIDs, both demo CAs, good, revoked and
unknown serials, and the serials the soak adds), each answer checked against the data; one client
cycling through invalid requests (garbage, truncated DER, oversized bodies, bad GET paths, an
unknown issuer, a wrong Content-Type, a bad request line, half-closed and slow connections), each
expecting its refusal; and now and then a request that never finishes (it must get 408).

Every --change-every seconds the status data of one CA changes: a new serial is added (good), and at
the next change revoked, written as the CA's own tools would (index.txt line; issued.txt and a new
CRL by `ocspctl demo revoke`), announced by SIGHUP to the frontend every other time and otherwise left
to the file watch; the soak polls until the frontend answers the new status, and from a few seconds
after that only the new status is right. Every --rotate-every seconds one CA's responder is rotated
(`ocspctl demo reissue-responder`, then `ocspctl rotate` over the admin socket).

After --warmup seconds the RSS and open descriptors of every process (signer supervisor and workers,
frontend supervisor and workers) are read, and again at the end. Exit 1 when a valid request failed,
an answer was wrong, a change was not seen in time, a rotation failed, a process died or restarted,
or a process grew by more than --max-rss-growth MiB or --max-fd-growth descriptors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.soak_load import Ca, Load, Tally, build, get_bytes, load_ca, read_reply
from tests.integration.conftest import free_port, http_healthy, signer_healthy, wait_until

BIN = Path(sys.executable).parent
CAS = (("demo-rsa", "rsa", "rsa-ca", "index"), ("demo-ec", "ec", "ec-ca", "crl"))
SETTLE = 3.0  # seconds after the frontend first answers a change in which the old answer is still allowed
CHANGE_DEADLINE = 30.0  # seconds a change may take to be answered
FIRST_SERIAL = 0x50AC_0000
CACHE_ENTRIES = 256  # the frontend's [cache] max_entries in the soak


@dataclass
class Proc:
    role: str
    pid: int


def ctl(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([str(BIN / "ocspctl"), *args], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ocspctl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout}")
    return r.stdout + r.stderr


def set_up(d: Path, port: int) -> dict[str, str]:
    """The demo PKI in ``d`` (its own token store), two workers in each half, a 1 s file watch, a
small cache."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env["PYTHONUNBUFFERED"] = "1"
    ctl(env, "demo", "setup", "--dir", str(d), "--http-port", str(port),
        "--signer-address", f"unix:{d / 'run' / 'signer.sock'}")
    env["SOFTHSM2_CONF"] = str(d / "softhsm2.conf")
    signer_toml, frontend_toml = d / "etc" / "signer.toml", d / "etc" / "frontend.toml"
    signer_toml.write_text(signer_toml.read_text().replace("\n[listen]\n", "\n[signer]\nworkers = 2\n\n[listen]\n", 1))
    text = frontend_toml.read_text().replace("\n[listen]\n", "\n[listen]\nworkers = 2\n", 1)
    # A small cache, full before the warm-up ends (the unknown serials asked are random, each a new
    # entry): its growth to the bound is not counted as the process's.
    frontend_toml.write_text(text.replace("\n[cache]\n", f"\n[cache]\nmax_entries = {CACHE_ENTRIES}\n", 1))
    for name, *_ in CAS:
        f = d / "etc" / "ca.d" / f"{name}.toml"
        f.write_text(f.read_text().replace("\n[status]\n", '\n[status]\ncheck_interval = "1s"\n', 1))
    return env


def processes(pid: int, role: str) -> list[Proc]:
    """``pid`` and its long-lived children (a status loader child comes and goes: not counted)."""
    out = [Proc(f"{role} supervisor", pid)]
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"loader_child" not in cmdline:
            kids.append(int(entry.name))
    out += [Proc(f"{role} worker {i + 1}", k) for i, k in enumerate(sorted(kids))]
    return out


def usage(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open descriptors) of ``pid``, None when it is gone."""
    try:
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def event(what: str, started: float) -> None:
    """One line per data change and rotation, with its time and length (to line up with the logs)."""
    print(f"{time.strftime('%H:%M:%S')} {what} ({time.monotonic() - started:.1f}s)", flush=True)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".soak-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Soak:
    def __init__(self, args: argparse.Namespace, d: Path, env: dict[str, str], port: int,
                 signer: subprocess.Popen[bytes], frontend: subprocess.Popen[bytes]) -> None:
        self.args = args
        self.d = d
        self.env = env
        self.port = port
        self.signer = signer
        self.frontend = frontend
        self.tally = Tally()
        self.cas = [load_ca(name, d / sub, source) for name, _, sub, source in CAS]
        self.keys = {name: key for name, key, *_ in CAS}
        self.load = Load(port, self.cas, self.tally, max_request_bytes=10000, seed=args.seed)
        self.next_serial = FIRST_SERIAL
        self.pending: dict[str, int] = {}  # CA -> the serial added at its last change, to revoke next
        self.changes = {"add": 0, "revoke": 0, "sighup": 0, "watch": 0, "late": 0}
        self.rotations = {"ok": 0, "failed": 0}
        self.start_usage: list[tuple[Proc, tuple[float, int] | None]] = []

    # -- status data changes -------------------------------------------------------------------------
    def _write_change(self, ca: Ca) -> tuple[int, str]:
        """Add a serial (good) or revoke the one added before; returns (serial, new status)."""
        serial = self.pending.pop(ca.name, None)
        if serial is not None:
            ctl(self.env, "demo", "revoke", "--dir", str(self.d), "--ca", self.keys[ca.name], "--serial",
                f"{serial:X}", "--reason", "keyCompromise")
            self.changes["revoke"] += 1
            return serial, "revoked"
        serial = self.next_serial
        self.next_serial += 1
        hex_serial = f"{serial:X}"
        hex_serial = "0" * (len(hex_serial) % 2) + hex_serial  # whole octets, as OpenSSL writes them
        if ca.source == "index":
            path = ca.dir / "index.txt"
            atomic_write(path, path.read_text() + f"V\t301231235959Z\t\t{hex_serial}\tunknown\t/CN=soak {hex_serial}\n")
        else:
            path = ca.dir / "issued.txt"
            atomic_write(path, path.read_text() + hex_serial + "\n")
        self.pending[ca.name] = serial
        self.changes["add"] += 1
        return serial, "good"

    async def change(self, ca: Ca, sighup: bool) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        old_status = dict(ca.status)
        serial = self.pending.get(ca.name, self.next_serial)
        old = old_status.get(serial, "unknown")
        ca.changing[serial] = (frozenset({old, "revoked" if old == "good" else "good"}), float("inf"))
        serial, new = await loop.run_in_executor(None, self._write_change, ca)
        ca.read()
        if ca.status.get(serial, "unknown") != new:
            raise RuntimeError(f"{ca.name}: the data does not say {serial:X} is {new} after the change")
        if sighup:
            self.frontend.send_signal(signal.SIGHUP)
        self.changes["sighup" if sighup else "watch"] += 1
        self.load.extra[ca.name].append(serial)
        seen = await self._seen(ca, serial, new)
        if not seen:
            self.changes["late"] += 1
            self.tally.note(f"change {ca.name} {serial:X} -> {new} not answered within {CHANGE_DEADLINE:.0f}s")
        ca.changing[serial] = (ca.changing[serial][0], time.monotonic() + SETTLE)
        event(f"data: {ca.name} serial {serial:X} {old} -> {new} by {'SIGHUP' if sighup else 'the file watch'}"
              f"{'' if seen else ', NOT answered in time'}", started)

    async def _seen(self, ca: Ca, serial: int, new: str) -> bool:
        """Poll (nonce-less GETs, as a cache would see them) until the new status is answered a few times
        in a row (each answer may come from either worker)."""
        from cryptography.x509 import ocsp

        from bench.soak_load import STATUS_NAMES

        deadline = time.monotonic() + CHANGE_DEADLINE
        in_a_row = 0
        while time.monotonic() < deadline and in_a_row < 6:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(get_bytes(build(ca, serial)))
                reply = await asyncio.wait_for(read_reply(reader), 10)
            finally:
                writer.close()
            resp = ocsp.load_der_ocsp_response(reply.body) if reply.status == 200 else None
            ok = resp is not None and resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL and \
                STATUS_NAMES[resp.certificate_status] == new
            in_a_row = in_a_row + 1 if ok else 0
            if not ok:
                await asyncio.sleep(0.1)  # a poll's interval, not a wait for an event
        return in_a_row >= 6

    # -- rotation --------------------------------------------------------------------------------------
    def _rotate(self, name: str) -> None:
        out = ctl(self.env, "demo", "reissue-responder", "--dir", str(self.d), "--ca", self.keys[name])
        cert = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("cert:"))
        ctl(self.env, "rotate", "--config", str(self.d / "etc" / "signer.toml"), "--ca", name, "--cert", cert)

    async def rotate(self, name: str) -> None:
        started = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._rotate, name)
            self.rotations["ok"] += 1
            event(f"rotation: {name} ok", started)
        except (RuntimeError, StopIteration, subprocess.TimeoutExpired) as e:
            self.rotations["failed"] += 1
            self.tally.note(f"rotation of {name} failed: {e}")
            event(f"rotation: {name} FAILED", started)

    # -- the run ---------------------------------------------------------------------------------------
    async def events(self, t0: float) -> None:
        i_change = i_rotate = 0
        next_change, next_rotate = t0 + self.args.change_every, t0 + self.args.rotate_every
        end = t0 + self.args.seconds
        while True:
            now = time.monotonic()
            if now >= end - 5:
                return
            if now >= next_change:
                await self.change(self.cas[i_change % len(self.cas)], sighup=i_change % 2 == 0)
                i_change += 1
                next_change = time.monotonic() + self.args.change_every
            elif now >= next_rotate:
                await self.rotate(self.cas[i_rotate % len(self.cas)].name)
                i_rotate += 1
                next_rotate = time.monotonic() + self.args.rotate_every
            else:
                try:
                    await asyncio.wait_for(self.load.stop.wait(), min(next_change, next_rotate, end - 5) - now)
                except TimeoutError:
                    pass

    async def run(self) -> None:
        t0 = time.monotonic()
        tasks = [asyncio.create_task(self.load.valid_client()) for _ in range(self.args.clients)]
        tasks.append(asyncio.create_task(self.load.invalid_client()))
        tasks.append(asyncio.create_task(self.load.stalled_client(30.0)))
        events = asyncio.create_task(self.events(t0))
        sampler = asyncio.create_task(self.sample())
        await asyncio.sleep(min(self.args.warmup, self.args.seconds / 2))  # the warm-up's length
        self.start_usage = self.snapshot()
        print(f"warm-up done; measuring ({len(self.start_usage)} processes)", flush=True)
        remaining = t0 + self.args.seconds - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(events), max(remaining, 0))
        except TimeoutError:
            pass
        await events
        self.load.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, sampler), 60)

    async def sample(self) -> None:
        """Every --sample-every seconds a line of every process's RSS (MiB), to see a trend."""
        while self.args.sample_every > 0:
            try:
                await asyncio.wait_for(self.load.stop.wait(), self.args.sample_every)
                return
            except TimeoutError:
                pass
            parts = [f"{p.role.replace(' supervisor', '').replace('worker ', 'w')} "
                     f"{u[0]:.1f}" if u else f"{p.role} gone" for p, u in self.snapshot()]
            print(f"{time.strftime('%H:%M:%S')} RSS MiB: " + ", ".join(parts), flush=True)

    def snapshot(self) -> list[tuple[Proc, tuple[float, int] | None]]:
        procs = processes(self.signer.pid, "signer") + processes(self.frontend.pid, "frontend")
        return [(p, usage(p.pid)) for p in procs]

    def report(self) -> int:
        end = {p.role: (p, u) for p, u in self.snapshot()}
        t = self.tally
        print(f"\n{'requests by kind':34} {'sent':>8} {'failed':>7} {'wrong':>6}")
        for kind in sorted(t.kinds):
            print(f"  {kind:32} {t.kinds[kind]:8} {t.failed[kind]:7} {t.wrong[kind]:6}")
        failed, wrong = sum(t.failed.values()), sum(t.wrong.values())
        print(f"  {'total':32} {sum(t.kinds.values()):8} {failed:7} {wrong:6}")
        lat = sorted(t.latencies) or [0.0]
        print(f"valid answers' latency: p50 {lat[len(lat) // 2] * 1e3:.1f} ms, p99 {lat[len(lat) * 99 // 100] * 1e3:.1f}"
              f" ms, max {lat[-1] * 1e3:.0f} ms; load average at the end {os.getloadavg()[0]:.1f}")
        print(f"tryLater answers inside a change window (allowed): {t.window_errors}")
        print(f"half-closed connections: {t.half_closed['answered']} answered, {t.half_closed['closed']} closed "
              "without an answer (counted wrong)")
        print("data changes: {add} added, {revoke} revoked ({sighup} by SIGHUP, {watch} by the file watch), "
              "{late} not answered in time".format(**self.changes))
        print("rotations: {ok} ok, {failed} failed".format(**self.rotations))
        print(f"\n{'process':20} {'pid':>8} {'RSS MiB start':>14} {'end':>7} {'growth':>7} {'fds start':>10} "
              f"{'end':>5} {'growth':>7}")
        problems = []
        for proc, before in self.start_usage:
            after_proc, after = end.get(proc.role, (None, None))
            if before is None or after is None or after_proc is None or after_proc.pid != proc.pid:
                print(f"{proc.role:20} {proc.pid:8}  gone or restarted (now {after_proc.pid if after_proc else '-'})")
                problems.append(f"{proc.role} died or was restarted")
                continue
            drss, dfd = after[0] - before[0], after[1] - before[1]
            print(f"{proc.role:20} {proc.pid:8} {before[0]:14.1f} {after[0]:7.1f} {drss:+7.1f} {before[1]:10} "
                  f"{after[1]:5} {dfd:+7}")
            if drss > self.args.max_rss_growth:
                problems.append(f"{proc.role} RSS grew {drss:.1f} MiB (limit {self.args.max_rss_growth})")
            if dfd > self.args.max_fd_growth:
                problems.append(f"{proc.role} fds grew by {dfd} (limit {self.args.max_fd_growth})")
        for role in sorted(set(end) - {p.role for p, _ in self.start_usage}):
            problems.append(f"{role} appeared during the run (a restart?)")
        if failed:
            problems.append(f"{failed} valid requests failed")
        if wrong:
            problems.append(f"{wrong} wrong answers")
        if self.changes["late"]:
            problems.append(f"{self.changes['late']} data changes not answered within {CHANGE_DEADLINE:.0f}s")
        if self.rotations["failed"]:
            problems.append(f"{self.rotations['failed']} rotations failed")
        if t.notes:
            print("\nfirst problems seen:\n  " + "\n  ".join(t.notes))
        print(f"\nlimits: RSS growth {self.args.max_rss_growth} MiB, fd growth {self.args.max_fd_growth} per process")
        print("FAIL: " + "; ".join(problems) if problems else "PASS")
        return 1 if problems else 0


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0, help="length of the run (180)")
    # A frontend worker's RSS climbs for about a minute (caches and the GET path memo filling to their
    # bounds, the allocator's arenas) and is flat after: 57.0 MiB at 2 and at 7 minutes in a 7-minute run.
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the first RSS/fd reading (60)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent valid-request clients (4)")
    ap.add_argument("--change-every", type=float, default=20.0, help="seconds between data changes (20)")
    ap.add_argument("--rotate-every", type=float, default=45.0, help="seconds between rotations (45)")
    ap.add_argument("--max-rss-growth", type=float, default=10.0, help="MiB a process may grow (10)")
    ap.add_argument("--max-fd-growth", type=int, default=8, help="descriptors a process may gain (8)")
    ap.add_argument("--sample-every", type=float, default=60.0,
                    help="seconds between RSS lines during the run (60; 0: none)")
    ap.add_argument("--seed", type=int, default=1, help="the load's random seed")
    ap.add_argument("--keep", action="store_true", help="keep the demo directory and the logs")
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="ocsp-soak-", dir="/tmp"))
    port = free_port()
    print(f"soak: {args.seconds:.0f}s in {d}, frontend on 127.0.0.1:{port}", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    code = 1
    try:
        env = set_up(d, port)
        signer = start([str(BIN / "ocsp-signer"), "--config", str(d / "etc" / "signer.toml")], env, d / "signer.log")
        procs.append(signer)
        wait_until(lambda: signer_healthy(f"unix:{d / 'run' / 'signer.sock'}"), 60, "the signer")
        frontend = start([str(BIN / "ocsp-frontend"), "--config", str(d / "etc" / "frontend.toml")], env,
                         d / "frontend.log")
        procs.append(frontend)
        wait_until(lambda: http_healthy(port), 60, "the frontend")
        soak = Soak(args, d, env, port, signer, frontend)
        asyncio.run(soak.run())
        code = soak.report()
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if code == 0 and not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"kept {d} (signer.log, frontend.log)")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
