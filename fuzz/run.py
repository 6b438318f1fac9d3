"""``make fuzz``: each target (fuzz.checks, fuzz.http_harness) under atheris for FUZZ_SECONDS, one
process per target, one after another; a table of executions, speed, coverage and findings at the end.

    python -m fuzz.run [--seconds 60] [--target decode --target get_path ...]

An input that breaks a target's rules (an exception other than the allowed refusals, a differential
mismatch, a hang past --timeout) is written by libFuzzer to tests/vectors/fuzz/<target>/ as
crash-<sha1> (timeout-, oom-): commit it, and tests/fuzz/test_fuzz_vectors.py replays it in
`make test` from then on. The working corpus grows in var/fuzz/<target>/ (not committed); the seeds
(fuzz.seeds) are written afresh to var/fuzz/seeds/<target>/ on every run. Exit 1 on any finding.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("decode", "get_path", "http")
FINDINGS = ROOT / "tests" / "vectors" / "fuzz"
MAX_LEN = {"decode": 4096, "get_path": 8192, "http": 4096}


def child(target: str, libfuzzer_args: list[str], work: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["shared", "asn1crypto", "frontend", "fuzz"]):
        from fuzz import checks
        if target == "http":
            from fuzz.http_harness import Harness
    # The http harness's status file lives in the work directory: libFuzzer ends the process without
    # running Python's exit handlers, so a temporary directory would be left behind on every run.
    check = Harness(work / "http-harness").check if target == "http" else getattr(checks, f"check_{target}")
    atheris.Setup([sys.argv[0], *libfuzzer_args], check)
    atheris.Fuzz()


def write_seeds(target: str, where: Path) -> int:
    from fuzz.seeds import SEEDS

    where.mkdir(parents=True, exist_ok=True)
    for old in where.iterdir():
        old.unlink()
    seeds = SEEDS[target]()
    for data in seeds:
        (where / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds)


def run_target(target: str, seconds: int, timeout: int, work: Path) -> dict[str, object]:
    corpus, seeds = work / target, work / "seeds" / target
    corpus.mkdir(parents=True, exist_ok=True)
    n_seeds = write_seeds(target, seeds)
    out = FINDINGS / target
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    log = work / f"{target}.log"
    args = [sys.executable, "-m", "fuzz.run", "--child", target, "--work", str(work), "--",
            f"-max_total_time={seconds}", f"-timeout={timeout}", f"-max_len={MAX_LEN[target]}",
            "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={out}/", str(corpus), str(seeds)]
    print(f"fuzz {target}: {seconds}s, {n_seeds} seeds, corpus {corpus}, log {log}", flush=True)
    t0 = time.monotonic()
    with log.open("wb") as f:
        # Bounded even if libFuzzer ignored its own limit: the run time, plus start-up and a last input.
        rc = subprocess.run(args, check=False, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            timeout=seconds + timeout + 120).returncode
    elapsed = time.monotonic() - t0
    text = log.read_text(errors="replace")
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    cov = re.findall(r"\bcov: (\d+) ft: (\d+) corp: (\d+)", text)
    new = sorted(set(out.iterdir()) - before)
    if rc != 0 and not new:
        print(text[-3000:], file=sys.stderr)
    return {"target": target, "rc": rc, "seconds": elapsed, "execs": int(execs[-1]) if execs else 0,
            "cov": cov[-1] if cov else ("?", "?", "?"), "new": new}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (60)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take (10)")
    ap.add_argument("--target", action="append", choices=TARGETS, help="a target (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / "var" / "fuzz", help="corpus directory")
    ap.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    ap.add_argument("libfuzzer", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.libfuzzer, args.work)
        return 0
    rows = [run_target(t, args.seconds, args.timeout, args.work) for t in args.target or TARGETS]
    print(f"\n{'target':10} {'seconds':>8} {'execs':>10} {'execs/s':>9} {'cov':>6} {'ft':>7} {'corpus':>7}  findings")
    for r in rows:
        cov, ft, corp = r["cov"]  # type: ignore[misc]
        new = r["new"]
        found = ", ".join(str(p.relative_to(ROOT)) for p in new) or ("none" if r["rc"] == 0 else f"exit {r['rc']}")
        print(f"{r['target']:10} {r['seconds']:8.0f} {r['execs']:10} {r['execs'] / max(r['seconds'], 1e-9):9.0f} "
              f"{cov:>6} {ft:>7} {corp:>7}  {found}")
    if any(r["new"] or r["rc"] != 0 for r in rows):
        print("\nfindings are in tests/vectors/fuzz/<target>/: commit them (tests/fuzz/test_fuzz_vectors.py "
              "replays them), fix the bug, and see README 'make fuzz'", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
