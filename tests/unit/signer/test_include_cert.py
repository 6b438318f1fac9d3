"""Which certificates go in BasicOCSPResponse.certs (responder.include_cert).

A delegated responder's certificate must be there; when the CA answers for itself it is left out
unless the CA file says otherwise, because Go's OCSP client (golang.org/x/crypto/ocsp) takes any
certificate there for a delegate and checks that the issuer signed it: an intermediate CA's own
certificate, signed by its parent, fails. Every answer is judged by Go itself and by cryptography.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from shared.rpc import signer_pb2 as pb
from shared.rpc import signer_pb2_grpc as pb_grpc
from signer.config import load_signer_config
from signer.responders import include_cert_for
from tests.clients import go
from tests.unit.signer.signer_fixtures import (
    Ca,
    make_ca,
    make_cert,
    new_key,
    pem,
    run_server,
    short_dir,
    status,
    token_for,
    verify_signature,
    write_setup,
)


def make_intermediate(name: str) -> Ca:
    """A root CA and an intermediate under it; the intermediate's own key signs its OCSP answers."""
    root_key = new_key("p256")
    root = make_cert(f"{name} root", root_key, None, root_key, ca=True)
    key = new_key("p256")
    cert = make_cert(f"{name} CA", key, root, root_key, ca=True)
    return Ca(name, cert, key, cert, key, f"{name}-ca-key")


def sign_one(tmp_path: Path, ca: Ca, extra: dict[str, str] | None = None) -> bytes:
    conf = write_setup(short_dir(tmp_path), [ca], responder_extra=extra)
    out: list[bytes] = []

    async def scenario(stub: pb_grpc.SignerStub) -> None:
        reply = await stub.Sign(pb.SignRequest(request_id="c1", responses=[status(ca.cert_id(7))]))
        out.append(bytes(reply.ocsp_response))

    run_server(conf, token_for(ca), scenario)
    return out[0]


def root_itself(name: str) -> Ca:
    return make_ca(name, direct=True)


CASES: list[tuple[str, Any, dict[str, str] | None, bool, bool]] = [
    # what signs, include_cert as configured, certs carries the responder certificate, Go accepts
    ("intermediate CA itself", make_intermediate, None, False, True),
    ("root CA itself", root_itself, None, False, True),
    ("delegated responder", make_ca, None, True, True),
    ("root CA itself, include_cert = true", root_itself, {"include_cert": "true"}, True, True),
    # An operator's explicit choice is kept, even one no client can verify without the certificate.
    ("delegated, include_cert = false", make_ca, {"include_cert": "false"}, False, False),
]


@pytest.mark.parametrize("what,factory,extra,included,go_accepts", CASES, ids=[c[0] for c in CASES])
def test_certs_by_responder_kind(tmp_path: Path, go_ocsp: Path, what: str, factory: Any,
                                 extra: dict[str, str] | None, included: bool, go_accepts: bool) -> None:
    ca = factory("alpha")
    der = sign_one(tmp_path, ca, extra)
    resp = ocsp.load_der_ocsp_response(der)
    verify_signature(resp, ca.responder_cert)
    assert resp.certificates == ([ca.responder_cert] if included else [])
    rc, text = go.judge(go_ocsp, der, pem(ca.cert), tmp_path)
    if go_accepts:
        assert (rc, text) == (0, "good"), f"Go rejects the answer of a {what}: {text}"
    else:
        assert rc == 1 and text.startswith("rejected:"), text


def test_go_rejects_an_intermediate_that_includes_itself(tmp_path: Path, go_ocsp: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The failure the default avoids, shown with Go itself; and the signer warns at start."""
    ca = make_intermediate("alpha")
    with caplog.at_level(logging.WARNING, logger="signer.responders"):
        der = sign_one(tmp_path, ca, {"include_cert": "true"})
    assert ocsp.load_der_ocsp_response(der).certificates == [ca.cert]
    rc, text = go.judge(go_ocsp, der, pem(ca.cert), tmp_path)
    assert rc == 1 and text.startswith("rejected:"), text
    assert any("include_cert = true" in r.getMessage() and "Go" in r.getMessage() for r in caplog.records)


def test_include_cert_unset_reads_as_none(tmp_path: Path) -> None:
    ca, delegated = make_intermediate("alpha"), make_ca("beta")
    cfg = load_signer_config(write_setup(short_dir(tmp_path), [ca, delegated]))
    own, other = cfg.responders
    assert own.include_cert is None and other.include_cert is None
    assert own.cert == own.ca_cert == ca.cert.public_bytes(serialization.Encoding.DER)
    assert (include_cert_for(own), include_cert_for(other)) == (False, True)
