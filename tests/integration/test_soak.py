"""A short soak (bench/soak.py, README "make soak"): a real signer and frontend, two workers each, on a
demo PKI of their own, under mixed valid and invalid load with two data changes and a rotation.
Every answer must be right and no valid request may fail; the RSS/fd limits are loose here (a
20-second run on a shared machine measures little: `make soak` holds the real limits)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_passes() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "20", "--warmup", "4",
                        "--clients", "2", "--change-every", "5", "--rotate-every", "8",
                        "--max-rss-growth", "200", "--max-fd-growth", "64"],
                       capture_output=True, text=True, timeout=400, check=False, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.rstrip().endswith("PASS") or "\nPASS\n" in out, out
    for kind in ("valid post nonce", "valid get", "invalid garbage", "invalid oversized"):
        m = re.search(rf"^  {kind} +(\d+) +0 +0$", out, re.MULTILINE)
        assert m and int(m.group(1)) > 0, f"{kind!r} not sent, or failed:\n{out}"
    assert re.search(r"data changes: [1-9]\d* added", out), out
    assert re.search(r"rotations: [1-9]\d* ok, 0 failed", out), out
