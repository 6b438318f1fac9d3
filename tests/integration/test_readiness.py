"""/-/ready against real processes: a signer and a frontend of their own (the frontend reads its CRL of
the demo EC CA from a copy this test replaces), the frontend checking the signer every 200 ms.

signer up -> 200; signer stopped -> 503 naming the signer; signer back -> 200; the EC CA's CRL past its
nextUpdate -> 503 naming the CA; a fresh CRL -> 200. /-/health answers 200 throughout.
"""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.integration.conftest import Demo, Process, wait_until
from tests.integration.private_stack import ask, copy_ca_dir, frontend_process, get, signer_process

pytestmark = pytest.mark.integration

CRL_LIFE = dt.timedelta(seconds=5)  # long enough to be installed before it expires, on a busy machine


def reissue_crl(demo: Demo, path: Path, life: dt.timedelta) -> dt.datetime:
    """Replace the CRL at ``path`` with one of the same entries, a higher number and nextUpdate = now +
    ``life``, signed by the demo EC CA; returns its nextUpdate."""
    old = x509.load_pem_x509_crl(path.read_bytes())
    ca = x509.load_pem_x509_certificate(demo.path("ec-ca", "ca.pem").read_bytes())
    key = serialization.load_pem_private_key(demo.path("ec-ca", "ca-key.pem").read_bytes(), None)
    number = old.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(max(now, old.last_update_utc)).next_update(now + life)
         .add_extension(x509.CRLNumber(number + 1), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                        critical=False))
    for revoked in old:
        b = b.add_revoked_certificate(revoked)
    tmp = path.with_suffix(".new")
    tmp.write_bytes(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]
    tmp.replace(path)
    return now + life


def test_ready_follows_signer_and_status_data(demo: Demo, tmp_path: Path) -> None:
    ca_dir, crl = copy_ca_dir(demo, tmp_path, "ec-ca", "demo-ec.toml")
    signer, address = signer_process(demo, tmp_path)
    frontend, port = frontend_process(demo, tmp_path, address, signer_extra='health_interval = "200ms"\n',
                                      ca_dir=ca_dir)
    started: list[Process] = []

    def ready() -> tuple[int, str]:
        status, headers, body = get(port, "/-/ready")
        assert "no-store" in headers["cache-control"]
        assert get(port, "/-/health")[0] == 200  # liveness, whatever readiness says
        return status, body

    try:
        signer.start()
        started.append(signer)
        frontend.start()
        started.append(frontend)
        wait_until(lambda: ready() == (200, "ready\n"), 15, "/-/ready to say ready")

        signer.stop()
        wait_until(lambda: ready()[0] == 503, 15, "/-/ready to notice the signer is gone")
        _, body = ready()
        assert body.startswith(f"not ready: signer {address}: UNAVAILABLE") and body.count("\n") == 1, body
        # A request needing a signature gets tryLater meanwhile: what /-/ready warned about.
        assert ask(demo, port).response_status == ocsp.OCSPResponseStatus.TRY_LATER

        signer.start()
        wait_until(lambda: ready() == (200, "ready\n"), 20, "/-/ready to see the signer back")
        assert ask(demo, port).response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

        # The EC CA's CRL: replaced by one that expires in a few seconds, which is then left to expire.
        next_update = reissue_crl(demo, crl, CRL_LIFE)
        frontend.signal(signal.SIGHUP)
        wait_until(lambda: ready()[0] == 503, CRL_LIFE.total_seconds() + 15, "/-/ready to notice the stale CRL")
        _, body = ready()
        assert body.startswith("not ready: CA demo-ec: status data expired at "
                               f"{next_update:%Y-%m-%dT%H:%M:%SZ}"), body
        assert ask(demo, port, "ec-ca").response_status == ocsp.OCSPResponseStatus.TRY_LATER
        assert ask(demo, port, "rsa-ca").response_status == ocsp.OCSPResponseStatus.SUCCESSFUL

        reissue_crl(demo, crl, dt.timedelta(days=1))
        frontend.signal(signal.SIGHUP)
        wait_until(lambda: ready() == (200, "ready\n"), 15, "/-/ready to accept the fresh CRL")
    finally:
        for p in reversed(started):
            p.stop()
