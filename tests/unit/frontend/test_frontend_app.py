"""frontend.app on its own: the CertID checks composed in serving_ca, and the pipeline's layering
(loading it loads no HTTP code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from frontend.app import CaEntry, build_issuers, serving_ca
from shared.ocsp.certid import issuer_keys
from shared.ocsp.errors import Unauthorized
from shared.ocsp.types import CertId, HashAlgorithm, ParsedRequest
from tests.unit.frontend.frontend_pki import TestCA

ROOT = Path(__file__).resolve().parents[3]
ALL = frozenset(HashAlgorithm)


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    a, b, other = TestCA("App CA a"), TestCA("App CA b"), TestCA("App CA not served")
    ca_a, ca_b = CaEntry("a", None), CaEntry("b", None)  # type: ignore[arg-type]  # no source needed
    return {"a": a, "b": b, "other": other, "ca_a": ca_a, "ca_b": ca_b,
            "issuers": build_issuers([(a.der, ca_a), (b.der, ca_b)])}


def cid(ca: TestCA, serial: int, alg: HashAlgorithm = HashAlgorithm.SHA1) -> CertId:
    key = issuer_keys(ca.der)[alg]
    return CertId(alg, key.issuer_name_hash, key.issuer_key_hash, serial.to_bytes(2, "big"))


def request(*cert_ids: CertId) -> ParsedRequest:
    return ParsedRequest(cert_ids=cert_ids)


def test_one_ca_answers(pki: dict[str, Any]) -> None:
    a = pki["a"]
    assert serving_ca(request(cid(a, 1)), pki["issuers"], ALL) is pki["ca_a"]
    # Several CertIDs of one CA, in any of the served hash algorithms.
    both = request(cid(a, 1), cid(a, 2, HashAlgorithm.SHA256), cid(a, 3, HashAlgorithm.SHA512))
    assert serving_ca(both, pki["issuers"], ALL) is pki["ca_a"]


@pytest.mark.parametrize("order", ["alone", "after a served one", "between served ones"])
def test_unserved_issuer_is_unauthorized(pki: dict[str, Any], order: str) -> None:
    a, unserved = cid(pki["a"], 1), cid(pki["other"], 1)
    ids = {"alone": [unserved], "after a served one": [a, unserved], "between served ones": [a, unserved, a]}
    with pytest.raises(Unauthorized, match="does not serve"):
        serving_ca(request(*ids[order]), pki["issuers"], ALL)


def test_two_cas_are_unauthorized(pki: dict[str, Any]) -> None:
    with pytest.raises(Unauthorized, match=r"two CAs \(a, b\)"):
        serving_ca(request(cid(pki["a"], 1), cid(pki["b"], 1)), pki["issuers"], ALL)


def test_hash_not_served_is_unauthorized(pki: dict[str, Any]) -> None:
    sha1_only = frozenset({HashAlgorithm.SHA1})
    with pytest.raises(Unauthorized, match="sha256 is not served"):
        serving_ca(request(cid(pki["a"], 1, HashAlgorithm.SHA256)), pki["issuers"], sha1_only)
    # Checked per CertID, in order: a later CertID in a hash not served fails the request.
    with pytest.raises(Unauthorized, match="sha512 is not served"):
        serving_ca(request(cid(pki["a"], 1), cid(pki["a"], 2, HashAlgorithm.SHA512)), pki["issuers"], sha1_only)


def test_first_fault_is_the_one_raised(pki: dict[str, Any]) -> None:
    """The checks run CertID by CertID: the earliest CertID at fault decides the message."""
    unserved_hash = cid(pki["other"], 1, HashAlgorithm.SHA384)  # both faults: its hash is checked first
    with pytest.raises(Unauthorized, match="sha384 is not served"):
        serving_ca(request(unserved_hash), pki["issuers"], frozenset({HashAlgorithm.SHA1}))
    with pytest.raises(Unauthorized, match="two CAs"):
        serving_ca(request(cid(pki["a"], 1), cid(pki["b"], 1), cid(pki["other"], 1)), pki["issuers"], ALL)


PROBE = r"""
import json, sys
import frontend.app
print(json.dumps(sorted(sys.modules)))
"""


def test_pipeline_loads_no_http_code() -> None:
    """frontend.app is the OCSP pipeline only: HTTP framing, routing and rendering depend on it, never
    the other way round (the cache's stored header lines come from the function the wiring passes)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout)
    http = [m for m in modules if m == "httptools" or m.startswith(("httptools.", "frontend.http"))]
    assert not http, http
