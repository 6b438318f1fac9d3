"""mTLS between frontend and signer, with real processes: a signer listening with TLS on a free loopback
port (the demo's token, responders and transport PKI), clients with and without the right certificate.

Every refusal must be refused *and* logged by the signer: the handshake refusals happen inside gRPC
core (signer.handshake_log turns core's handshaker trace into log lines), the identity refusal in
the interceptor.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from shared.rpc import signer_pb2, signer_pb2_grpc
from signer.ctl.demo import transport
from tests.integration.conftest import Demo, Process, free_port, wait_until
from tests.integration.ocsp_client import build_request, load_cert, post
from tests.integration.private_stack import check_config, demo_config, ocsp_frontend, ocsp_signer, running

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


@dataclass
class TlsSigner:
    process: Process
    address: str
    dir: Path  # where this test's files live
    tls: Path  # the demo's transport PKI

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


def _pem(path: Path, cert: x509.Certificate, key: object) -> tuple[Path, Path]:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = path.with_name(path.stem + "-key.pem")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                           serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)
    return path, key_path


def signer_toml(demo: Demo, d: Path, address: str) -> Path:
    """The demo's signer.toml on a TCP port with a [tls] table, its own audit chain and admin socket."""
    tls = demo.path("tls")
    return demo_config(demo, "signer.toml", d / "signer.toml", {
        "address": address, "dir": d / "audit", "writer_id": "mtls", "socket": d / "admin.sock",
    }, append=(f'\n[tls]\ncert = "{tls / "signer.pem"}"\nkey = "{tls / "signer-key.pem"}"\n'
               f'client_ca = "{tls / "ca.pem"}"\nallowed_clients = ["cn:ocsp-frontend", "cn:ocsp-admin"]\n'))


def frontend_toml(demo: Demo, d: Path, name: str, address: str, tls_ca: Path, http_port: int) -> Path:
    tls = demo.path("tls")
    return demo_config(demo, "frontend.toml", d / f"{name}.toml", {"port": http_port, "address": address},
                       after={"address": f'tls_ca = "{tls_ca}"\ntls_cert = "{tls / "frontend.pem"}"\n'
                                         f'tls_key = "{tls / "frontend-key.pem"}"'})


@pytest.fixture(scope="module")
def tls_signer(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSigner]:
    d = tmp_path_factory.mktemp("mtls")
    address = f"127.0.0.1:{free_port()}"
    config = signer_toml(demo, d, address)
    probe = d / "probe.toml"  # what the readiness check reads: the frontend's tls keys
    probe.write_text(frontend_toml(demo, d, "probe-src", address, demo.path("tls", "ca.pem"), 1)
                     .read_text())
    p = ocsp_signer(demo, config, address, probe=probe)
    p.start()
    yield TlsSigner(p, address, d, demo.path("tls"))
    p.stop()


@pytest.fixture(scope="module")
def client_certs(tls_signer: TlsSigner) -> dict[str, tuple[Path | None, Path | None]]:
    """name -> (cert, key): the frontend's own, none, another CA's, an expired one, a stranger's."""
    tls, d = tls_signer.tls, tls_signer.dir
    ca_cert = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls / "ca-key.pem").read_bytes(), password=None)
    other_log: list[str] = []
    other = transport.ensure_transport_pki(d / "other", NOW, other_log)  # a CA of its own
    expired = transport.issue(ca_cert, ca_key, "ocsp-frontend", server=False, now=NOW,
                             not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1))
    stranger = transport.issue(ca_cert, ca_key, "intruder", server=False, now=NOW)
    # A CN that would forge a log line of its own if logged raw.
    forger = transport.issue(ca_cert, ca_key, "forger\nocsp-signer: INFO: client cn:ocsp-frontend connected",
                            server=False, now=NOW)
    return {
        "frontend": (tls / "frontend.pem", tls / "frontend-key.pem"),
        "none": (None, None),
        "other-ca": (other.cert("frontend"), other.key("frontend")),
        "expired": _pem(d / "expired.pem", *expired),
        "not-allowed": _pem(d / "intruder.pem", *stranger),
        "forger": _pem(d / "forger.pem", *forger),
    }


def health(address: str, ca: Path, cert: Path | None, key: Path | None) -> signer_pb2.HealthReply:
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes() if key else None,
                                         cert.read_bytes() if cert else None)
    with grpc.secure_channel(address, creds) as channel:
        return signer_pb2_grpc.SignerStub(channel).Health(signer_pb2.HealthRequest(), timeout=5)


def test_frontend_identity_is_served(tls_signer: TlsSigner, client_certs: dict) -> None:
    reply = health(tls_signer.address, tls_signer.tls / "ca.pem", *client_certs["frontend"])
    assert reply.serving
    log = tls_signer.log()
    assert "mTLS, TLS 1.3" in log
    assert "client cn:ocsp-frontend connected from ipv4:127.0.0.1:" in log and "over TLSv1.3" in log


@pytest.mark.parametrize("name,code,logged", [
    ("none", grpc.StatusCode.UNAVAILABLE,
     "TLS handshake refused from ipv4:127.0.0.1:{port}: the client sent no certificate"),
    ("other-ca", grpc.StatusCode.UNAVAILABLE, ("TLS handshake refused from ipv4:127.0.0.1:{port}: the client "
                                               "certificate is not issued by tls.client_ca")),
    ("expired", grpc.StatusCode.UNAVAILABLE, ("TLS handshake refused from ipv4:127.0.0.1:{port}: the client "
                                              "certificate has expired")),
    ("not-allowed", grpc.StatusCode.PERMISSION_DENIED, ("refused /ocsp.signer.v1.Signer/Health from "
                                                        "ipv4:127.0.0.1:{port}: client identity cn:intruder")),
])
def test_refused_and_logged(tls_signer: TlsSigner, client_certs: dict, name: str, code: grpc.StatusCode,
                            logged: str) -> None:
    before = len(tls_signer.log())
    with pytest.raises(grpc.RpcError) as e:
        health(tls_signer.address, tls_signer.tls / "ca.pem", *client_certs[name])
    assert e.value.code() == code
    pattern = re.escape(logged).replace(re.escape("{port}"), r"\d+")
    wait_until(lambda: re.search(pattern, tls_signer.log()[before:]) is not None, 10,
               f"the signer to log the refusal of {name}")


def test_client_names_cannot_forge_log_lines(tls_signer: TlsSigner, client_certs: dict) -> None:
    before = len(tls_signer.log())
    with pytest.raises(grpc.RpcError) as e:
        health(tls_signer.address, tls_signer.tls / "ca.pem", *client_certs["forger"])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    wait_until(lambda: "cn:forger" in tls_signer.log()[before:], 10, "the signer to log the refusal")
    lines = tls_signer.log()[before:].splitlines()
    refused = [line for line in lines if "cn:forger" in line]
    assert refused and all("cn:forger\\nocsp-signer: INFO:" in line for line in refused), refused
    # A forged line would start with the forger's text; every real one starts with its timestamp.
    assert not any(line.startswith("ocsp-signer: INFO: client cn:ocsp-frontend") for line in lines), lines
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z ocsp-signer: ", line) for line in lines), lines


@pytest.mark.parametrize("version,negotiated", [("-tls1_2", False), ("-tls1_3", True)])
def test_tls_version(tls_signer: TlsSigner, version: str, negotiated: bool) -> None:
    tls = tls_signer.tls
    before = len(tls_signer.log())
    r = subprocess.run(["openssl", "s_client", version, "-connect", tls_signer.address, "-alpn", "h2",
                        "-CAfile", str(tls / "ca.pem"), "-cert", str(tls / "frontend.pem"),
                        "-key", str(tls / "frontend-key.pem")],
                       input=b"", capture_output=True, timeout=30, check=False)
    out = r.stdout.decode(errors="replace")
    if negotiated:
        assert "New, TLSv1.3, Cipher is TLS_" in out, out
    else:
        assert "Cipher is (NONE)" in out, out
        wait_until(lambda: "the client does not offer TLS 1.3" in tls_signer.log()[before:], 10,
                   "the signer to log the TLS 1.2 refusal")


@pytest.mark.parametrize("which", ["right-ca", "wrong-ca"])
def test_frontend_verifies_the_signer(demo: Demo, tls_signer: TlsSigner, which: str) -> None:
    """The frontend answers through the signer when its certificate verifies, tryLater when it does not."""
    d = tls_signer.dir
    other = transport.ensure_transport_pki(d / "other", NOW, [])  # a CA that did not issue the signer's
    tls_ca = tls_signer.tls / "ca.pem" if which == "right-ca" else other.ca
    port = free_port()
    config = frontend_toml(demo, d, f"frontend-{which}", tls_signer.address, tls_ca, port)
    p = ocsp_frontend(demo, config, port, name=f"ocsp-frontend-{which}")
    with running(p):
        issuer = load_cert(demo.path("rsa-ca", "ca.pem"))
        der = build_request(load_cert(demo.path("rsa-ca", "leaf-good.pem")), issuer)
        status, _, body = post(port, der)
        assert status == 200
        resp = ocsp.load_der_ocsp_response(body)
        if which == "right-ca":
            assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
        else:
            assert resp.response_status == ocsp.OCSPResponseStatus.TRY_LATER
            wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in p.log.read_text(errors="replace"), 10,
                       "the frontend to log why")
            assert "tryLater" in p.log.read_text()


def test_plaintext_to_a_remote_signer_is_a_config_error(demo: Demo, tmp_path: Path) -> None:
    text = demo.path("etc", "frontend.toml").read_text()
    text = re.sub(r'(?m)^address = .*$', 'address = "192.0.2.10:50051"', text, count=1)
    text = re.sub(r'(?m)^tls_(ca|cert|key) = .*\n', "", text)
    config = tmp_path / "frontend.toml"
    config.write_text(text)
    r = check_config(demo, "ocsp-frontend", config)
    assert r.returncode == 2
    assert f"{config}: signer.address: 192.0.2.10:50051 is not a unix socket or loopback address" in r.stderr
