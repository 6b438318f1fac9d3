"""The signer checks what it signs against its own copy of the status data ([policy] verify_status),
with real processes: a signer over mTLS with the demo's token and CA files, called directly with the
frontend's identity and typed fields, as a compromised frontend would; then both halves running on one
CA directory while its CRL is replaced.

Every lie is refused (ABORTED), nothing is signed, and the audit log holds a refusal record for it;
the truthful request for the same serial is signed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from shared.ocsp.certid import issuer_keys
from shared.ocsp.types import HashAlgorithm
from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.audit import RefusalRecord, show, verify
from signer.ctl.demo.ca_db import read_crl_entries, write_crl
from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import build_request, load_cert, post, random_nonce
from tests.integration.private_stack import copy_ca_dir, demo_config, ocsp_frontend, ocsp_signer, running

pytestmark = pytest.mark.integration

HOUR = 3600


@dataclass
class Stack:
    demo: Demo
    signer: Process
    address: str
    dir: Path

    def stub(self) -> pb_grpc.SignerStub:
        tls = self.demo.path("tls")
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.pem").read_bytes(), private_key=(tls / "frontend-key.pem").read_bytes(),
            certificate_chain=(tls / "frontend.pem").read_bytes())
        return pb_grpc.SignerStub(grpc.secure_channel(self.address, creds))

    def audit_files(self) -> list[Path]:
        return sorted((self.dir / "audit").glob("audit-*.jsonl"))


@pytest.fixture(scope="module")
def stack(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("verify-status")
    tls = demo.path("tls")
    address = f"127.0.0.1:{free_port()}"
    conf = demo_config(demo, "signer.toml", d / "signer.toml", {
        "address": address, "dir": d / "audit", "writer_id": "verify", "socket": d / "admin.sock",
    }, append=(f'\n[tls]\ncert = "{tls / "signer.pem"}"\nkey = "{tls / "signer-key.pem"}"\n'
               f'client_ca = "{tls / "ca.pem"}"\nallowed_clients = ["cn:ocsp-frontend"]\n'))
    probe = d / "probe.toml"  # the readiness check connects as the frontend
    probe.write_text(demo_config(demo, "frontend.toml", d / "probe-src.toml", {"address": address},
                                 after={"address": f'tls_ca = "{tls / "ca.pem"}"\ntls_cert = "{tls / "frontend.pem"}"\n'
                                                   f'tls_key = "{tls / "frontend-key.pem"}"'}).read_text())
    p = ocsp_signer(demo, conf, address, name="ocsp-signer-verify", probe=probe)
    with running(p):
        yield Stack(demo, p, address, d)


def cert_id(demo: Demo, ca: str, serial: int) -> pb.CertId:
    key = issuer_keys(load_cert(demo.path(ca, "ca.pem")).public_bytes(serialization.Encoding.DER))[HashAlgorithm.SHA1]
    return pb.CertId(hash_algorithm=pb.SHA1, issuer_name_hash=key.issuer_name_hash,
                     issuer_key_hash=key.issuer_key_hash,
                     serial_number=serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True))


def serial_of(demo: Demo, ca: str, which: str) -> int:
    return load_cert(demo.path(ca, f"leaf-{which}.pem")).serial_number


_CRL_REASONS = {"unspecified": 0, "keyCompromise": 1, "CACompromise": 2, "affiliationChanged": 3,
                "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8,
                "privilegeWithdrawn": 9, "AACompromise": 10}


def index_revocation(demo: Demo, serial: int) -> tuple[int, int | None]:
    """(revocation time, CRLReason code) of ``serial`` in the RSA CA's index.txt."""
    for line in demo.path("rsa-ca", "index.txt").read_text().split("\n"):
        fields = line.split("\t")
        if len(fields) == 6 and fields[0] == "R" and int(fields[3], 16) == serial:
            when, _, reason = fields[2].partition(",")
            t = dt.datetime.strptime(when, "%y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
            return int(t.timestamp()), _CRL_REASONS[reason] if reason else None
    raise AssertionError(f"serial {serial:X} is not revoked in index.txt")


def item(demo: Demo, ca: str, serial: int, status: int, *, validity: int = HOUR, revoked_at: int = 0,
         reason: int | None = None) -> pb.SingleStatus:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    fields: dict[str, object] = {"cert_id": cert_id(demo, ca, serial), "status": status,
                                 "this_update": now, "next_update": now + validity}
    if status == pb.REVOKED:
        fields["revocation_time"] = revoked_at
        if reason is not None:
            fields["revocation_reason"] = reason
    return pb.SingleStatus(**fields)  # type: ignore[arg-type]


def sign(stack: Stack, *items: pb.SingleStatus, request_id: str) -> tuple[grpc.StatusCode, str]:
    try:
        stack.stub().Sign(pb.SignRequest(request_id=request_id, responses=list(items)), timeout=10)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def logged(stack: Stack, request_id: str) -> list:
    return [r.record for r in show(stack.audit_files()) if r.record.request_id == request_id]


def test_lies_are_refused_and_recorded_and_the_truth_is_signed(stack: Stack) -> None:
    demo = stack.demo
    revoked = serial_of(demo, "rsa-ca", "revoked")
    good = serial_of(demo, "rsa-ca", "good")
    revoked_at, reason = index_revocation(demo, revoked)
    wrong_reason = 4 if reason != 4 else 5
    lies = {
        "good for a revoked serial": item(demo, "rsa-ca", revoked, pb.GOOD),
        "revoked at the wrong time": item(demo, "rsa-ca", revoked, pb.REVOKED, revoked_at=revoked_at - 60,
                                          reason=reason),
        "revoked with the wrong reason": item(demo, "rsa-ca", revoked, pb.REVOKED, revoked_at=revoked_at,
                                              reason=wrong_reason),
        "revoked for a good serial": item(demo, "rsa-ca", good, pb.REVOKED, revoked_at=revoked_at, reason=1),
        "good for a never-issued serial (index CA)": item(demo, "rsa-ca", 0x7E57AB1E, pb.GOOD),
        "a window longer than the data allows": item(demo, "rsa-ca", good, pb.GOOD, validity=3 * 24 * HOUR),
        "good for a serial the CRL revokes": item(demo, "ec-ca", serial_of(demo, "ec-ca", "revoked"), pb.GOOD),
    }
    for i, (what, lie) in enumerate(lies.items()):
        rid = f"lie-{i}"
        code, detail = sign(stack, lie, request_id=rid)
        assert code == grpc.StatusCode.ABORTED, (what, code, detail)
        records = logged(stack, rid)
        assert len(records) == 1 and isinstance(records[0], RefusalRecord), (what, records)
        assert records[0].client == "cn:ocsp-frontend" and records[0].reason in detail, what
    # The truthful requests for the same serials are signed, and logged as signatures.
    truths = [item(demo, "rsa-ca", revoked, pb.REVOKED, revoked_at=revoked_at, reason=reason),
              item(demo, "rsa-ca", good, pb.GOOD), item(demo, "rsa-ca", 0x7E57AB1E, pb.UNKNOWN)]
    for i, truth in enumerate(truths):
        code, detail = sign(stack, truth, request_id=f"truth-{i}")
        assert code == grpc.StatusCode.OK, detail
        (record,) = logged(stack, f"truth-{i}")
        assert not isinstance(record, RefusalRecord)
    # A lie beside the truth in one request: nothing of it is signed.
    code, _ = sign(stack, truths[1], lies["good for a revoked serial"], request_id="mixed")
    assert code == grpc.StatusCode.ABORTED
    assert all(isinstance(r, RefusalRecord) for r in logged(stack, "mixed"))
    log = stack.signer.log.read_text(errors="replace")
    assert "REFUSED to sign for cn:ocsp-frontend, CA 'demo-rsa'" in log
    # The log with its refusal records verifies against the audit key.
    report = verify(stack.audit_files(), demo.path("audit-key.pem"))
    assert report.ok, report.failures


@pytest.fixture
def both(demo: Demo, tmp_path: Path) -> Iterator[tuple[Process, Process, int, Path]]:
    """A signer and a frontend on one CA directory whose EC CRL is a copy the test replaces."""
    ca_dir, crl = copy_ca_dir(demo, tmp_path, "ec-ca", "demo-ec.toml")
    f = ca_dir / "demo-ec.toml"
    f.write_text(f.read_text().replace("[status]\n", '[status]\ncheck_interval = "200ms"\n', 1))
    address = f"unix:{tmp_path / 's.sock'}"
    sconf = demo_config(demo, "signer.toml", tmp_path / "signer.toml", {
        "address": address, "socket": None, "writer_id": "crlswap", "ca_dir": ca_dir, "dir": tmp_path / "audit"})
    port = free_port()
    fconf = demo_config(demo, "frontend.toml", tmp_path / "frontend.toml",
                        {"port": port, "address": address, "ca_dir": ca_dir})
    sp = ocsp_signer(demo, sconf, address, name="ocsp-signer-crlswap", probe=fconf)
    fp = ocsp_frontend(demo, fconf, port, name="ocsp-frontend-crlswap")
    with running(sp, fp):
        yield sp, fp, port, crl


def test_a_crl_swapped_while_both_run_causes_no_refusal_beyond_the_reload_skew(
        demo: Demo, both: tuple[Process, Process, int, Path]) -> None:
    signer, frontend, port, crl = both
    leaf, ca = load_cert(demo.path("ec-ca", "leaf-good.pem")), load_cert(demo.path("ec-ca", "ca.pem"))

    def ask() -> ocsp.OCSPResponse:
        status, _, body = post(port, build_request(leaf, ca, nonce=random_nonce()))
        assert status == 200
        return ocsp.load_der_ocsp_response(body)

    first = ask()
    assert first.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert first.certificate_status == ocsp.OCSPCertStatus.GOOD
    entries, number, _old = read_crl_entries(crl, ca)
    entries[leaf.serial_number] = (dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5), "keyCompromise")
    key = serialization.load_pem_private_key(demo.path("ec-ca", "ca-key.pem").read_bytes(), password=None)
    reloaded = "demo-ec: status data reloaded"
    before_f = frontend.log.read_text(errors="replace").count(reloaded)
    before_s = signer.log.read_text(errors="replace").count(reloaded)
    write_crl(crl, ca, key, entries, number + 1, dt.datetime.now(dt.UTC).replace(microsecond=0))
    # Both halves pick the new CRL up within their check_interval; meanwhile answers may be tryLater.
    wait_until(lambda: frontend.log.read_text(errors="replace").count(reloaded) > before_f
               and signer.log.read_text(errors="replace").count(reloaded) > before_s, 30, "both halves to reload")
    refusals_then = signer.log.read_text(errors="replace").count("REFUSED to sign")
    for _ in range(5):  # once both have the new CRL: every answer is signed, and says revoked
        resp = ask()
        assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, resp.response_status
        assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert signer.log.read_text(errors="replace").count("REFUSED to sign") == refusals_then
