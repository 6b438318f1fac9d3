"""wrk as the one load generator of bench/signing_bench.py: the Lua script, its request bodies, and
the reading of its result; plus what the bench needs around it (CPU time of a process tree, readiness
in the kernel's listen table).

Fresh nonces. A nonce request is built by template: Python builds one DER OCSPRequest with a 32-byte
marker as its nonce and cuts it at the marker into a prefix and a suffix (every DER length inside is
fixed by the nonce's fixed length, so it holds for any 32 bytes). The Lua script's ``request()`` puts
32 new random bytes between them for every request, so no two requests of a run carry the same nonce
and no answer can come from a cache. (Pre-generated bodies cycled by Lua would repeat once the run
outlasts the list.)

No empty connections. wrk 4.1's ``wrk.resolve`` opens and closes a connection to each address to
see that it answers; ``openssl ocsp -port`` then spins for good on ``read() == 0``. The script
replaces ``wrk.resolve`` with a plain lookup, so the first connection wrk makes carries a request.

Half load. wrk has no rate limit (wrk2 is not packaged in Debian). The script's ``delay()`` holds
each connection back between its response and its next request, so ``connections / delay`` requests
per second at most: the bench sets it from the peak run's rate to about half of peak and reports the
rate achieved with the latency (the latency wrk measures starts when a request is written, so the
delay is not in it; the load is still closed-loop, not wrk2's constant rate).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

NONCE_LENGTH = 32

LUA = r"""
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup(host, service)
end

local threads = {}
local counter = 0
function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
   table.insert(threads, thread)
end

local function unhex(h)
   return (h:gsub("..", function(c) return string.char(tonumber(c, 16)) end))
end

local headers = {["Content-Type"] = "application/ocsp-request"}
local mode, prefix, suffix, nlen, check, fixed, dbase, dfrac

function init(args)
   mode, prefix, suffix, nlen = args[1], unhex(args[2]), unhex(args[3]), tonumber(args[4])
   check = args[5] == "1"
   local d = tonumber(args[6])
   dbase, dfrac = math.floor(d), d - math.floor(d)
   math.randomseed(os.time() * 1000 + tid * 7919 + math.floor(os.clock() * 1e6))
   good, bad = 0, 0
   if mode == "get" then
      fixed = wrk.format("GET", args[7])
   elseif mode == "post" then
      fixed = wrk.format("POST", wrk.path, headers, prefix)
   end
end

local bytes = {}
function request()
   if fixed then return fixed end
   for i = 1, nlen do bytes[i] = math.random(0, 255) end
   return wrk.format("POST", wrk.path, headers, prefix .. string.char(unpack(bytes)) .. suffix)
end

-- a successful OCSPResponse: SEQUENCE { ENUMERATED 0, ... }
function response(status, hdrs, body)
   if not check then return end
   local ok = false
   if status == 200 then
      local l = body:byte(2)
      if l then
         local off = 3
         if l >= 128 then off = 3 + l - 128 end
         ok = body:byte(off) == 10 and body:byte(off + 1) == 1 and body:byte(off + 2) == 0
      end
   end
   if ok then good = good + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
   local g, b = 0, 0
   for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
   local e = summary.errors
   io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d %d\n", summary.requests,
      summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), g, b))
end
"""

# An exponential pause of mean ``dbase + dfrac`` ms, rounded at random (wrk's timers count whole ms)
# so that the mean holds: the connections do not fall into step and fire together, and the arrivals
# add up to about a Poisson stream.
LUA_DELAY = r"""
function delay()
   local d = -(dbase + dfrac) * math.log(1 - math.random())
   return math.floor(d + math.random())
end
"""


@dataclass(frozen=True, slots=True)
class Body:
    """What the Lua script sends: ``mode`` "nonce" (prefix + fresh nonce + suffix, POST), "post"
    (prefix alone, the same body every time) or "get" (``path``)."""
    mode: str
    prefix: bytes = b""
    suffix: bytes = b""
    path: str = "/"


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    good: int
    bad: int
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / max(self.requests, 1) * 1e6


def nonce_template(cert_path: Path, issuer_path: Path) -> Body:
    """The DER request for ``cert`` with a NONCE_LENGTH-byte nonce, cut around the nonce."""
    from tests.integration.ocsp_client import build_request, load_cert

    marker = os.urandom(NONCE_LENGTH)
    der = build_request(load_cert(cert_path), load_cert(issuer_path), nonce=marker)
    assert der.count(marker) == 1
    i = der.index(marker)
    return Body("nonce", der[:i], der[i + NONCE_LENGTH:])


def fixed_post(cert_path: Path, issuer_path: Path) -> Body:
    from tests.integration.ocsp_client import build_request, load_cert

    return Body("post", build_request(load_cert(cert_path), load_cert(issuer_path)))


def fixed_get(cert_path: Path, issuer_path: Path) -> Body:
    """The same nonce-less request as fixed_post, as GET /{url-encoded base64} (RFC 6960 A.1)."""
    import base64
    from urllib.parse import quote

    der = fixed_post(cert_path, issuer_path).prefix
    return Body("get", path="/" + quote(base64.b64encode(der).decode(), safe=""))


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every live descendant (frontend or signer workers, when there are some)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) of the processes ``pids`` and their descendants."""
    total = 0.0
    for root in pids:
        for p in tree_pids(root):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def listening(port: int) -> bool:
    """Whether 127.0.0.1:``port`` is in the kernel's listen table (`ss -ltn`): no connect probe."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return f":{port}" in out


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.02)


def run_wrk(port: int, body: Body, *, connections: int, seconds: float, server_pids: list[int],
            delay_ms: float = 0.0, check: bool = True, threads: int = 1) -> WrkResult:
    """One wrk run against 127.0.0.1:``port``; the CPU the server processes spent during it."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "ocsp.lua"
        script.write_text(LUA + (LUA_DELAY if delay_ms > 0 else ""))
        cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(round(seconds), 1)}s", "--latency", "--timeout", "10s",
               "-s", str(script), f"http://127.0.0.1:{port}/", "--", body.mode, body.prefix.hex(),
               body.suffix.hex(), str(NONCE_LENGTH if body.mode == "nonce" else 0), "1" if check else "0",
               f"{delay_ms:.4f}", body.path]
        before = tree_cpu(server_pids)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        cpu = tree_cpu(server_pids) - before
    m = re.search(r"^RESULT (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    n, dur_us, e1, e2, e3, e4, e5, p50, p99, good, bad = (int(x) for x in m.group(1).split())
    return WrkResult(requests=n, seconds=dur_us / 1e6, errors=e1 + e2 + e3 + e4 + e5, good=good, bad=bad,
                     p50_ms=p50 / 1000, p99_ms=p99 / 1000, cpu_s=cpu)


def half_load(run: Callable[[float, float], WrkResult], peak: WrkResult, *, connections: int,
              seconds: float) -> WrkResult:
    """A run held to about half of ``peak``'s rate by wrk's per-connection delay; ``run(delay_ms,
    seconds)`` makes one wrk run. A connection's cycle is its pause plus the answer's latency, so a
    first short run measures that latency and the pause is set again from it when the rate it gave
    is off by more than 10 %."""
    target = peak.rps / 2
    cycle_ms = connections * 1000.0 / target
    delay_ms = cycle_ms
    probe = run(delay_ms, max(seconds / 2, 1.0))
    if abs(probe.rps / target - 1) > 0.1:
        latency_ms = connections * 1000.0 / max(probe.rps, 1.0) - delay_ms
        delay_ms = max(cycle_ms - latency_ms, 0.05)
    return run(delay_ms, seconds)
