"""The demo's configuration files, as text: D/etc/signer.toml, D/etc/frontend.toml and one ca.d file
per demo CA (``ocspctl demo setup`` writes them when they change)."""

from __future__ import annotations

from pathlib import Path

from signer.ctl.demo.layout import DEMO_AUDIT_LABEL, DEMO_CAS, DEMO_TOKEN
from signer.ctl.demo.transport import frontend_tls_toml, signer_tls_toml
from signer.tomltext import toml_string


def demo_configs(d: Path, http_port: int, signer_address: str, module: str) -> dict[Path, str]:
    etc = d / "etc"
    signer_tls, frontend_tls = signer_tls_toml(d, signer_address), frontend_tls_toml(d, signer_address)
    files = {
        etc / "signer.toml": f"""\
# ocsp-signer configuration of the demo PKI (written by `ocspctl demo setup`).
ca_dir = {toml_string(etc / "ca.d")}

[listen]
address = {toml_string(signer_address)}
{signer_tls}
[token]
module = {toml_string(module)}
label = {toml_string(DEMO_TOKEN)}
pin_file = {toml_string(d / "token.pin")}

[policy]
max_validity = "7d"
max_clock_skew = "5m"

[admin]
socket = {toml_string(d / "run" / "admin.sock")}

[audit]
dir = {toml_string(d / "audit")}
key_label = {toml_string(DEMO_AUDIT_LABEL)}
writer_id = "demo"
""",
        etc / "frontend.toml": f"""\
# ocsp-frontend configuration of the demo PKI (written by `ocspctl demo setup`).
ca_dir = {toml_string(etc / "ca.d")}

[listen]
host = "127.0.0.1"
port = {http_port}
path_prefix = "/"
max_request_bytes = 10000

[signer]
address = {toml_string(signer_address)}
timeout = "2s"
{frontend_tls}
[cache]
rotation_grace = "2s"
""",
    }
    for spec in DEMO_CAS.values():
        ca_dir = d / spec.dir_name
        if spec.source == "index":
            status = f"""\
[status]
source = "index"
path = {toml_string(ca_dir / "index.txt")}
validity = "24h"   # how long answers are valid; the CA/Browser Forum BRs (4.9.10) want 8h..10d
"""
        else:
            status = f"""\
[status]
source = "crl"
path = {toml_string(ca_dir / "crl.pem")}
issued_serials = {toml_string(ca_dir / "issued.txt")}
unissued = "unknown"
"""
        files[etc / "ca.d" / f"{spec.name}.toml"] = f"""\
# {spec.subject_cn} of the demo PKI (written by `ocspctl demo setup`).
name = {toml_string(spec.name)}
ca_cert = {toml_string(ca_dir / "ca.pem")}

[responder]
cert = {toml_string(ca_dir / "responder.pem")}
key_label = {toml_string(spec.responder_label)}
responder_id = "key"
include_cert = true

{status}"""
    return files
