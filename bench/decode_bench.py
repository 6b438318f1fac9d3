"""Request decoding: the fast path of decode_request against the general (asn1crypto) decoder, in
the same run (sans-IO, no server: shared.ocsp.request is the whole cost of turning request DER into a
ParsedRequest).

    .venv/bin/python bench/decode_bench.py [--repeat N] [--runs R]

Rows: a one-CertID request without a nonce (`openssl ocsp -no_nonce`) and with openssl's default
16-octet nonce (the committed vectors), then a two-CertID request, which the fast path leaves to the
general decoder (its fast column is decode_request: the fast path's attempt plus the fallback). Each
figure is the process CPU time of N decodes, the best of R runs, the two decoders' runs interleaved
(the machine is shared: CPU time and the best run keep other load out); 'ratio' is general / fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.ocsp.request import decode_request, decode_request_fast, decode_request_general

VECTORS = ROOT / "tests" / "vectors"
ROWS = [
    ("one CertID, no nonce", "req-openssl-sha256-no-nonce.der"),
    ("one CertID, 16-octet nonce", "req-openssl-sha1-nonce.der"),
    ("two CertIDs (falls back)", "req-two-certs.der"),
]


def per_call(decoders: list[Callable[[bytes], object]], der: bytes, repeat: int,
             runs: int) -> list[float]:
    """CPU seconds per call of each decoder: the best of ``runs`` runs of ``repeat`` calls, each
    run of every decoder in turn."""
    best = [float("inf")] * len(decoders)
    for decode in decoders:
        decode(der)
    for _ in range(runs):
        for i, decode in enumerate(decoders):
            t0 = time.process_time()
            for _ in range(repeat):
                decode(der)
            best[i] = min(best[i], (time.process_time() - t0) / repeat)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    print(f"{'request':28} {'bytes':>6} {'fast µs':>8} {'general µs':>11} {'ratio':>7}")
    for name, file in ROWS:
        der = (VECTORS / file).read_bytes()
        fast_taken = decode_request_fast(der) is not None
        fast, general = per_call([decode_request, decode_request_general], der, args.repeat, args.runs)
        assert decode_request(der) == decode_request_general(der)
        mark = "" if fast_taken else " (fell back)"
        print(f"{name:28} {len(der):6d} {fast * 1e6:8.2f} {general * 1e6:11.2f} {general / fast:6.1f}x{mark}")


if __name__ == "__main__":
    main()
