"""Signer and frontend workers sharing one host: P-256 signed answers (a fresh nonce in every request,
wrk -c32) for each mix of ``[signer] workers`` and ``[listen] workers`` in {1, 2}, unpinned, on the demo
PKI, alternated over ``--runs`` rounds.

    .venv/bin/python bench/worker_mix_bench.py --demo var/demo [--seconds 8] [--runs 2]

Prints answers/s, server CPU µs per answer (both servers' process trees, from /proc) and p99 at peak;
the question it answers is which mix to run when both halves share a small host (README, Deploying).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench.signing_bench as sb
from bench.wrk_load import WrkResult, nonce_template, run_wrk

MIXES = ((2, 2), (1, 2), (2, 1), (1, 1))  # (signer workers, frontend workers)
BASE_CONFIGS = sb.stack_configs  # the demo configs on free ports, before one_run patches it


def configs_with(signer_workers: int, frontend_workers: int) -> Callable[[Path, Path], tuple[Path, Path, int, str]]:
    def configs(demo: Path, tmp: Path) -> tuple[Path, Path, int, str]:
        signer, frontend, port, address = BASE_CONFIGS(demo, tmp)
        signer.write_text(signer.read_text().replace("[listen]\n", f"[signer]\nworkers = {signer_workers}\n\n[listen]\n", 1))
        frontend.write_text(frontend.read_text().replace("[listen]\n", f"[listen]\nworkers = {frontend_workers}\n", 1))
        return signer, frontend, port, address
    return configs


def one_run(demo: Path, mix: tuple[int, int], seconds: float) -> WrkResult:
    body = nonce_template(demo / "ec-ca" / "leaf-good.pem", demo / "ec-ca" / "ca.pem")
    sb.stack_configs = configs_with(*mix)  # project_stack reads it at call time
    tmp = Path(tempfile.mkdtemp(prefix="worker-mix-"))
    try:
        with sb.project_stack(demo, tmp, None) as (signer, frontend, port):
            run_wrk(port, body, connections=32, seconds=2, server_pids=[signer, frontend])  # warm-up
            return run_wrk(port, body, connections=32, seconds=seconds, server_pids=[signer, frontend])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=ROOT / "var" / "demo")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    results: dict[tuple[int, int], list[WrkResult]] = {mix: [] for mix in MIXES}
    for _ in range(args.runs):
        for mix, runs in results.items():
            runs.append(one_run(args.demo, mix, args.seconds))
    print(f"{'signer workers':>14} {'frontend workers':>16} {'answers/s':>10} {'CPU µs/answer':>14} {'p99 ms':>7}")
    for (sw, fw), runs in results.items():
        rps = sorted(r.requests / r.seconds for r in runs)[len(runs) // 2]
        cpu = sorted(r.cpu_s / r.requests * 1e6 for r in runs)[len(runs) // 2]
        p99 = sorted(r.p99_ms for r in runs)[len(runs) // 2]
        print(f"{sw:>14} {fw:>16} {rps:10.0f} {cpu:14.0f} {p99:7.1f}")
    print(f"(median of {args.runs} alternated runs of {args.seconds:g} s each, P-256, wrk -c32, unpinned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
