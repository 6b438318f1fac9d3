"""What a demo directory holds (see HACKING.md, "Demo PKI layout"): its two CAs, their leaves, the
token and key labels, the default ports. Names only; the modules beside this one make the files."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_TOKEN = "ocsp-demo"
DEMO_AUDIT_LABEL = "demo-audit"
DEFAULT_HTTP_PORT = 2560
DEFAULT_SIGNER_ADDRESS = "127.0.0.1:50051"  # TCP loopback with mTLS; a unix: address keeps plaintext


@dataclass(frozen=True)
class DemoCA:
    key: str  # "rsa" | "ec"
    dir_name: str
    name: str  # ca.d/<name>.toml
    subject_cn: str
    responder_cn: str
    responder_label: str
    responder_spec: str
    source: str  # "index" | "crl"


DEMO_CAS = {
    "rsa": DemoCA("rsa", "rsa-ca", "demo-rsa", "Demo RSA CA", "Demo RSA OCSP Responder", "demo-rsa-responder",
                  "rsa2048", "index"),
    "ec": DemoCA("ec", "ec-ca", "demo-ec", "Demo EC CA", "Demo EC OCSP Responder", "demo-ec-responder",
                 "p256", "crl"),
}

# file stem -> initial status (None = good, "unissued" = issued but never recorded, else a reason).
DEMO_LEAVES: dict[str, str | None] = {
    "leaf-good": None,
    "leaf-good2": None,
    "leaf-good3": None,
    "leaf-revoked": "keyCompromise",
    "leaf-superseded": "superseded",
    "leaf-ceased": "cessationOfOperation",
    "leaf-unknown": "unissued",
}
