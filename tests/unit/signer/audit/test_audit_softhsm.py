"""Audit checkpoints signed by keys generated in a real SoftHSM token, verified with the public key.

Token work goes through the session's ``softhsm`` fixture (tests/conftest.py): it sets SOFTHSM2_CONF
before python-pkcs11 first loads the module in this process and holds the process's one logged-in
``Pkcs11Token``, so these tests share that token with the other in-process SoftHSM tests instead of
loading the module a second time. Checkpoint signatures run on a single-thread executor, as the
signer runs every token call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from shared.audit.checkpoint import parse_note
from shared.clock import FakeClock
from signer.audit import AuditLog, AuditRecord, Pkcs11CheckpointSigner, SignedStatus, verify
from signer.mechanisms import SignatureAlgorithm

START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def record(i: int) -> AuditRecord:
    return AuditRecord(time=START, client="frontend-a", request_id=f"r{i}", issuer_name="demo-ca",
                       issuer_id="11" * 32, statuses=(SignedStatus(f"{i + 1:x}", "good"),), nonce=False,
                       responder_fingerprint="22" * 32, key_label="demo-responder", generation=2,
                       response_sha256=hashlib.sha256(b"%d" % i).hexdigest())


@pytest.mark.parametrize("spec,algorithm", [("p256", SignatureAlgorithm.ECDSA_SHA256),
                                            ("rsa2048", SignatureAlgorithm.RSA_SHA256)])
def test_checkpoints_signed_in_token(softhsm, tmp_path: Path, spec: str, algorithm: SignatureAlgorithm) -> None:
    token = softhsm.token()
    label = f"audit-{spec}"
    spki = token.generate_key(label, spec)
    token_thread = ThreadPoolExecutor(1, thread_name_prefix="token")
    signer = Pkcs11CheckpointSigner(token, label)
    assert signer.algorithm is algorithm and signer.public_key_spki == spki

    async def go() -> None:
        log = await AuditLog.open(tmp_path, writer_id="hsm", signer=signer, checkpoint_every=4,
                                  checkpoint_interval=timedelta(minutes=5), max_file_bytes=1 << 20,
                                  clock=FakeClock(START), executor=token_thread)
        await asyncio.gather(*(log.append(record(i)) for i in range(10)))
        await log.close()

    try:
        asyncio.run(go())
    finally:
        token_thread.shutdown()
    (path,) = tmp_path.glob("audit-hsm-*.jsonl")
    report = verify([path], spki, require_complete=True)
    assert report.ok, [str(f) for f in report.failures]
    assert report.writers[0].checkpoints == 3 and report.writers[0].anchored == 10

    # the note's signature checks out with cryptography alone
    lines = path.read_text().splitlines()
    note = json.loads(lines[-1])["note"]
    body, (sig,) = parse_note(note)
    public = load_der_public_key(spki)
    if algorithm is SignatureAlgorithm.ECDSA_SHA256:
        public.verify(sig.signature, body, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]
    else:
        public.verify(sig.signature, body, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[call-arg,union-attr]

    # and a rewritten record is caught with the token's public key
    lines[3] = lines[3].replace('"r2"', '"r9"')
    path.write_text("\n".join(lines) + "\n")
    report = verify([path], spki)
    assert not report.ok and report.first_failure.line == 4  # type: ignore[union-attr]
