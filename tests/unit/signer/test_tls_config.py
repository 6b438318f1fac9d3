"""mTLS configuration: signer.toml [tls], frontend.toml [signer] tls keys, identities, handshake log lines."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from frontend.tls import load_signer_tls
from shared.address import is_local_address
from shared.config import ConfigError, Section
from shared.tls import PeerCertificate, first_allowed, parse_allowed
from signer.ctl.demo import transport
from signer.handshake_log import RecordParser, explain, handshake_failure
from signer.tls_config import load_tls

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> transport.TransportFiles:
    return transport.ensure_transport_pki(tmp_path_factory.mktemp("pki"), NOW, [])


def section(tmp_path: Path, text: str, table: str) -> Section:
    f = tmp_path / "x.toml"
    f.write_text(text)
    return Section.load(f).section(table)


def signer_tls(pki: transport.TransportFiles, **override: str) -> str:
    keys = {"cert": f'"{pki.cert("signer")}"', "key": f'"{pki.key("signer")}"', "client_ca": f'"{pki.ca}"'}
    keys.update(override)
    return "[tls]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v)


def test_signer_tls_ok(tmp_path: Path, pki: transport.TransportFiles) -> None:
    allowed = '["cn:ocsp-frontend", "DNS:Frontend.Example.", "spki:' + "AB" * 32 + '"]'
    text = signer_tls(pki, allowed_clients=allowed)
    tls = load_tls(section(tmp_path, text, "tls"))
    assert tls.allowed_clients == ("cn:ocsp-frontend", "dns:frontend.example", "spki:" + "ab" * 32)
    assert tls.subject == "CN=ocsp-signer,O=OCSP Demo" and tls.client_ca == pki.ca


@pytest.mark.parametrize("override,key,message", [
    ({"client_ca": ""}, "tls.client_ca", "is required"),
    ({"cert": '"/nonexistent.pem"'}, "tls.cert", "cannot read /nonexistent.pem"),
    ({"key": "KEY_OF_FRONTEND"}, "tls.key", "does not belong to the certificate"),
    ({"cert": "THE_KEY_FILE"}, "tls.cert", "holds no PEM certificate"),
    ({"allowed_clients": '["ocsp-frontend"]'}, "tls.allowed_clients", "must be cn:NAME"),
    ({"allowed_clients": '["spki:abcd"]'}, "tls.allowed_clients", "64 hex digits"),
    ({"allowed_clients": "[]"}, "tls.allowed_clients", "at least one identity"),
    ({"allowed_clients": '"cn:x"'}, "tls.allowed_clients", "must be a list of strings"),
])
def test_signer_tls_errors(tmp_path: Path, pki: transport.TransportFiles, override: dict[str, str], key: str,
                           message: str) -> None:
    override = {k: v.replace("KEY_OF_FRONTEND", f'"{pki.key("frontend")}"')
                .replace("THE_KEY_FILE", f'"{pki.key("signer")}"') for k, v in override.items()}
    with pytest.raises(ConfigError) as e:
        load_tls(section(tmp_path, signer_tls(pki, **override), "tls"))
    assert e.value.key == key and message in e.value.message and e.value.file == str(tmp_path / "x.toml")


def test_signer_key_permissions_warn(tmp_path: Path, pki: transport.TransportFiles,
                                     caplog: pytest.LogCaptureFixture) -> None:
    loose = tmp_path / "loose-key.pem"
    loose.write_bytes(pki.key("signer").read_bytes())
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_tls(section(tmp_path, signer_tls(pki, key=f'"{loose}"'), "tls"))
    assert "readable by group or others (mode 0644)" in caplog.text


def frontend_signer(pki: transport.TransportFiles, address: str, **keys: str) -> str:
    return f'[signer]\naddress = "{address}"\n' + "".join(f'{k} = "{v}"\n' for k, v in keys.items())


def test_frontend_tls_ok(tmp_path: Path, pki: transport.TransportFiles) -> None:
    text = frontend_signer(pki, "signer.internal:50051", tls_ca=str(pki.ca), tls_cert=str(pki.cert("frontend")),
                           tls_key=str(pki.key("frontend")), server_name="localhost")
    sec = section(tmp_path, text, "signer")
    tls = load_signer_tls(sec, ("signer.internal:50051",), "address")
    assert tls is not None and tls.server_name == "localhost"
    assert tls.options() == [("grpc.ssl_target_name_override", "localhost")]


@pytest.mark.parametrize("address,keys,key,message", [
    ("192.0.2.1:50051", {}, "signer.address", "plaintext gRPC to the signer is refused"),
    ("signer.internal:50051", {}, "signer.address", "is not a unix socket or loopback address"),
    ("127.0.0.1:50051", {"tls_ca": "CA"}, "signer.tls_cert", "go together"),
    ("127.0.0.1:50051", {"server_name": "x"}, "signer.server_name", "only with tls_ca"),
    ("127.0.0.1:50051", {"tls_ca": "FRONTEND_KEY", "tls_cert": "FRONTEND_CERT", "tls_key": "FRONTEND_KEY"},
     "signer.tls_ca", "holds no PEM certificate"),
    ("127.0.0.1:50051", {"tls_ca": "CA", "tls_cert": "FRONTEND_CERT", "tls_key": "FRONTEND_CERT"},
     "signer.tls_key", "holds no PEM key"),
])
def test_frontend_tls_errors(tmp_path: Path, pki: transport.TransportFiles, address: str, keys: dict[str, str],
                             key: str, message: str) -> None:
    names = {"CA": str(pki.ca), "FRONTEND_CERT": str(pki.cert("frontend")),
             "FRONTEND_KEY": str(pki.key("frontend"))}
    keys = {k: names.get(v, v) for k, v in keys.items()}
    sec = section(tmp_path, frontend_signer(pki, address, **keys), "signer")
    sec.str("address")
    with pytest.raises(ConfigError) as e:
        load_signer_tls(sec, (address,), "address")
    assert e.value.key == key and message in e.value.message


@pytest.mark.parametrize("address,local", [
    ("unix:/run/ocsp/signer.sock", True), ("127.0.0.1:50051", True), ("127.0.0.2:1", True),
    ("[::1]:50051", True), ("localhost:50051", True), ("10.0.0.1:50051", False), ("[2001:db8::1]:1", False),
    ("signer:50051", False),
])
def test_is_local_address(address: str, local: bool) -> None:
    assert is_local_address(address) is local


def test_peer_identities(pki: transport.TransportFiles) -> None:
    fe = PeerCertificate.from_pem(pki.cert("frontend").read_bytes())
    assert fe.common_names == ("ocsp-frontend",) and fe.name() == "cn:ocsp-frontend"
    assert fe.identities()[-1] == f"spki:{fe.spki_sha256}"
    assert first_allowed(fe, ["cn:ocsp-admin", f"spki:{fe.spki_sha256}"]) == f"spki:{fe.spki_sha256}"
    assert first_allowed(fe, ["cn:ocsp-admin"]) is None
    server = PeerCertificate.from_pem(pki.cert("signer").read_bytes())
    assert server.dns_names == ("localhost",)
    assert first_allowed(server, [parse_allowed("dns:LOCALHOST")]) == "dns:localhost"


# Lines as gRPC core 1.85 writes them with GRPC_VERBOSITY=INFO GRPC_TRACE=handshaker (args shortened).
CORE_LINES = """\
I1123 17:02:54.036684   20002 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7fe5e40024a0, args={grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:51684}}
I1123 17:02:54.037539   20004 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context
ocsp-signer: INFO: not core's
I1123 17:02:54.037562   20004 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context: OK
=== Source Location Trace: === 
src/core/util/status_helper.cc:68
 shutdown=false index=2, args={endpoint=0x7fe5e40024a0, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:51684, grpc.internal.security_connector=0x55f14a39fd20}}
E1123 17:02:55.000000   20004 add_port.cc:56] Unable to create secure server
"""


def test_handshake_records() -> None:
    parser = RecordParser()
    records = [rec for line in CORE_LINES.splitlines() for rec in parser.feed(line)] + parser.flush()
    assert [(lvl, src) for lvl, src, _ in records] == [
        ("I", "handshaker.cc"), ("I", "ssl_transport_security.cc"), ("", ""), ("I", "handshaker.cc"),
        ("E", "add_port.cc")]
    failures = [handshake_failure(src, text) for _, src, text in records]
    assert failures[0] is None and failures[1] is None and failures[2] is None and failures[4] is None
    f = failures[3]
    assert f is not None and f.peer == "ipv4:127.0.0.1:51684" and f.reason == "the client sent no certificate"
    assert not f.client_gave_up and "PEER_DID_NOT_RETURN_A_CERTIFICATE" in f.detail


@pytest.mark.parametrize("error,reason", [
    ("CERTIFICATE_VERIFY_FAILED: certificate has expired", "the client certificate has expired"),
    ("CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate", "not issued by tls.client_ca"),
    ("NO_SHARED_CIPHER: Invalid certificate verification context", "does not offer TLS 1.3"),
    ("WRONG_VERSION_NUMBER", "does not speak TLS"),
    ("UNAVAILABLE: Handshake read failed (Socket closed)", "closed the connection"),
])
def test_explain(error: str, reason: str) -> None:
    assert reason in explain(error)[0]
