"""A CRL fetched from a URL (issue 12): what a large one costs through ``UrlCrlSource``.

A web server on 127.0.0.1 in this process (tests/crl_server.py) publishes a CRL of N entries; the
source fetches it at start-up (download, verify, load: ``load_now``), checks it again unchanged (a
conditional GET answered 304), then fetches a newer CRL with a third of its entries different
(download, verify in the loader process, install). Also the download alone, as the fetcher does it
(streamed to a file). RSS is this process's peak, the CRL bodies the server holds included.

    .venv/bin/python bench/crl_fetch_bench.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.status.fetch import Validators, download
from shared.status.url_source import UrlCrlSource
from tests.crl_server import CrlServer, Route
from tests.unit.frontend.frontend_pki import TestCA
from tests.unit.shared.status_gen import simple_crl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    n = parser.parse_args().entries
    ca = TestCA("Bench CA")
    now = datetime.now(UTC).replace(microsecond=0)
    issuer = ca.name.public_bytes()
    first = simple_crl(ca.key, issuer, n, this_update=now - timedelta(minutes=1), next_update=now + timedelta(days=1),
                       number=1)
    second = simple_crl(ca.key, issuer, n, this_update=now, next_update=now + timedelta(days=1), number=2, shift=1)
    print(f"CRL: {n} entries, {len(first) / 2**20:.1f} MiB")
    state = Path(tempfile.mkdtemp(prefix="crl-fetch-bench-"))
    with CrlServer() as server:
        server.routes["/ca.crl"] = Route(first)
        t = time.perf_counter()
        got = download(server.url("/ca.crl"), state, validators=Validators(), timeout=120, max_size=1 << 30)
        print(f"download alone: {time.perf_counter() - t:.2f} s")
        assert got.path is not None
        got.path.unlink()
        src = UrlCrlSource("bench", server.url("/ca.crl"), state, ca.der, unissued="good", max_size=1 << 30,
                           timeout=120)
        t = time.perf_counter()
        src.load_now()
        print(f"start-up (download, verify, load): {time.perf_counter() - t:.2f} s")

        async def go() -> None:
            t = time.perf_counter()
            await src.refresh(force=True)
            print(f"unchanged check (304): {(time.perf_counter() - t) * 1000:.0f} ms")
            server.routes["/ca.crl"] = Route(second)
            t = time.perf_counter()
            installed = await src.refresh(force=True)
            print(f"new CRL (download, verify, install): {time.perf_counter() - t:.2f} s, installed {installed}, "
                  f"{len(src.last_changes or ())} serials changed")

        asyncio.run(go())
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
