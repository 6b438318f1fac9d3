"""ocspctl against a real SoftHSM token in a temp directory, run as a subprocess (as operators run it).

Certificates for token keys are issued here from the public key of an `ocspctl csr` request, so
the private keys never leave the token; openssl and cryptography judge what ocspctl produced.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.integration.conftest import ROOT, SOFTHSM_MODULE, free_port, tool, wait_until

pytestmark = pytest.mark.integration

TOKEN = "ctl-test"
NOW = dt.datetime.now(dt.UTC)


@dataclass
class Ctl:
    dir: Path
    env: dict[str, str]
    pin_file: Path
    so_pin_file: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([tool("ocspctl"), *args], env=self.env, capture_output=True, text=True, cwd=ROOT,
                           timeout=120, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"ocspctl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def token_args(self) -> list[str]:
        return ["--token-label", TOKEN, "--pin-file", str(self.pin_file)]

    def keygen(self, label: str, spec: str) -> subprocess.CompletedProcess[str]:
        return self.run("keygen", *self.token_args(), "--label", label, "--type", spec)

    def csr(self, label: str, subject: str = "/CN=OCSP Responder/O=Test") -> x509.CertificateSigningRequest:
        out = self.dir / f"{label}.csr"
        self.run("csr", *self.token_args(), "--label", label, "--subject", subject, "--out", str(out))
        return x509.load_pem_x509_csr(out.read_bytes())

    def pkcs11(self, script: str) -> object:
        """Run a python-pkcs11 snippet in a child process (SoftHSM reads SOFTHSM2_CONF once per process)."""
        prologue = textwrap.dedent(f"""
            import json, pkcs11
            from pkcs11 import Attribute, ObjectClass
            token = pkcs11.lib({SOFTHSM_MODULE!r}).get_token(token_label={TOKEN!r})
            session = token.open(user_pin=open({str(self.pin_file)!r}).read().strip())
        """)
        r = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(script)], env=self.env,
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ctl(tmp_path_factory: pytest.TempPathFactory, softhsm_env: dict[str, str]) -> Ctl:
    d = tmp_path_factory.mktemp("ctl")
    pin, so_pin = d / "user.pin", d / "so.pin"
    pin.write_text("1234-ctl-user\n")
    so_pin.write_text("5678-ctl-so\n")
    pin.chmod(0o600)
    so_pin.chmod(0o600)
    c = Ctl(dir=d, env=softhsm_env, pin_file=pin, so_pin_file=so_pin)
    c.run("init-token", "--label", TOKEN, "--pin-file", str(pin), "--so-pin-file", str(so_pin))
    return c


# -- a test CA, in software ---------------------------------------------------------------------------------


@dataclass
class SoftCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path

    def issue(self, public_key: object, *, eku: list[x509.ObjectIdentifier] | None = None,
              nocheck: bool = True, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "responder")]))
                   .issuer_name(self.cert.subject).public_key(public_key)  # type: ignore[arg-type]
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
                   .not_valid_after(not_after or NOW + dt.timedelta(days=30)))
        eku = [ExtendedKeyUsageOID.OCSP_SIGNING] if eku is None else eku
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if nocheck:
            builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
        return builder.sign(self.key, hashes.SHA256())


def make_ca(d: Path, name: str) -> SoftCA:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    path = d / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SoftCA(cert, key, path)


def write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


# -- init-token, keygen, csr --------------------------------------------------------------------------------


def test_init_token_is_idempotent(ctl: Ctl) -> None:
    r = ctl.run("init-token", "--label", TOKEN, "--pin-file", str(ctl.pin_file),
                "--so-pin-file", str(ctl.so_pin_file))
    assert "already exists" in r.stdout
    slots = subprocess.run(["softhsm2-util", "--show-slots"], env=ctl.env, capture_output=True,
                           text=True, check=False).stdout
    assert [line.split(":", 1)[1].strip() for line in slots.splitlines()
            if line.strip().startswith("Label:")].count(TOKEN) == 1


def test_pins_are_not_arguments(ctl: Ctl) -> None:
    r = ctl.run("keygen", "--token-label", TOKEN, "--pin", "1234", "--label", "x", "--type", "p256",
                check=False)
    assert r.returncode == 2


@pytest.mark.parametrize("spec,key_type", [("rsa2048", "RSA"), ("p256", "EC"), ("p384", "EC")])
def test_keygen_sensitive_not_extractable(ctl: Ctl, spec: str, key_type: str) -> None:
    label = f"kg-{spec}"
    r = ctl.keygen(label, spec)
    fingerprint = r.stdout.split("public key SHA-256: ")[1].split()[0]
    attrs = ctl.pkcs11(f"""
        priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label={label!r})
        print(json.dumps({{"sensitive": priv[Attribute.SENSITIVE], "extractable": priv[Attribute.EXTRACTABLE],
                          "always_sensitive": priv[Attribute.ALWAYS_SENSITIVE],
                          "never_extractable": priv[Attribute.NEVER_EXTRACTABLE],
                          "type": priv.key_type.name}}))
    """)
    assert attrs == {"sensitive": True, "extractable": False, "always_sensitive": True,
                     "never_extractable": True, "type": key_type}
    # The printed fingerprint is the SHA-256 of the SubjectPublicKeyInfo the CSR carries.
    spki = ctl.csr(label).public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    assert digest.finalize().hex() == fingerprint


def test_keygen_refuses_existing_label(ctl: Ctl) -> None:
    ctl.keygen("kg-dup", "p256")
    r = ctl.run("keygen", *ctl.token_args(), "--label", "kg-dup", "--type", "p256", check=False)
    assert r.returncode == 1
    assert "already exists" in r.stderr


@pytest.mark.parametrize("spec,algorithm", [("rsa2048", "sha256WithRSAEncryption"),
                                            ("p256", "ecdsa-with-SHA256"), ("p384", "ecdsa-with-SHA384")])
def test_csr_verifies_with_openssl(ctl: Ctl, spec: str, algorithm: str) -> None:
    label = f"csr-{spec}"
    ctl.keygen(label, spec)
    csr = ctl.csr(label, "/C=DE/ST=Berlin/L=Berlin/O=Example\\/Test/OU=PKI/CN=ocsp.example.com"
                         "/emailAddress=pki@example.com")
    path = ctl.dir / f"{label}.csr"
    r = subprocess.run(["openssl", "req", "-in", str(path), "-verify", "-noout"], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "verify OK" in r.stdout + r.stderr
    text = subprocess.run(["openssl", "req", "-in", str(path), "-noout", "-text"], capture_output=True,
                          text=True, check=False).stdout
    assert f"Signature Algorithm: {algorithm}" in text
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == \
        "1.2.840.113549.1.9.1=pki@example.com,CN=ocsp.example.com,OU=PKI,O=Example/Test,L=Berlin," \
        "ST=Berlin,C=DE"
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]


@pytest.mark.parametrize("subject", ["CN=no-slash", "/CN=x/FOO=bar", "/CN=", "/CN=x//O=y", "/C=DEU"])
def test_csr_rejects_bad_subject(ctl: Ctl, subject: str) -> None:
    r = ctl.run("csr", *ctl.token_args(), "--label", "kg-dup", "--subject", subject, check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("ocspctl: ")


def test_csr_unknown_key(ctl: Ctl) -> None:
    r = ctl.run("csr", *ctl.token_args(), "--label", "no-such-key", "--subject", "/CN=x", check=False)
    assert r.returncode == 1
    assert "no-such-key" in r.stderr


# -- pubkey -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["p256", "rsa2048"])
def test_pubkey_prints_the_token_key(ctl: Ctl, spec: str) -> None:
    label = f"pk-{spec}"
    fingerprint = ctl.keygen(label, spec).stdout.split("public key SHA-256: ")[1].split()[0]
    r = ctl.run("pubkey", *ctl.token_args(), "--label", label)
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----\n") and r.stderr == ""
    printed = serialization.load_pem_public_key(r.stdout.encode())
    der = printed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    assert digest.finalize().hex() == fingerprint  # the key keygen made
    # ... and the pair of the private key in the token: it verifies what the token signs.
    csr = ctl.csr(label)
    if spec == "p256":
        printed.verify(csr.signature, csr.tbs_certrequest_bytes,  # type: ignore[call-arg,union-attr]
                       ec.ECDSA(csr.signature_hash_algorithm))  # type: ignore[arg-type]
    else:
        printed.verify(csr.signature, csr.tbs_certrequest_bytes,  # type: ignore[call-arg,union-attr]
                       padding.PKCS1v15(), csr.signature_hash_algorithm)  # type: ignore[arg-type]
    # openssl reads it as the same key
    o = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=r.stdout.encode(),
                       capture_output=True, check=True)
    assert o.stdout == der
    # --out writes the same PEM and says where
    out = ctl.dir / f"{label}.pub.pem"
    w = ctl.run("pubkey", *ctl.token_args(), "--label", label, "--out", str(out))
    assert out.read_text() == r.stdout
    assert str(out) in w.stdout and fingerprint in w.stdout


def test_pubkey_unknown_label(ctl: Ctl) -> None:
    r = ctl.run("pubkey", *ctl.token_args(), "--label", "no-such-key", check=False)
    assert r.returncode == 2
    assert r.stderr == f"ocspctl: no key labelled 'no-such-key' in token {TOKEN!r}\n"
    assert r.stdout == ""
    out = ctl.dir / "never.pem"
    r = ctl.run("pubkey", *ctl.token_args(), "--label", "no-such-key", "--out", str(out), check=False)
    assert r.returncode == 2 and not out.exists()
    r = ctl.run("pubkey", "--token-label", TOKEN, "--label", "x", check=False)  # no PIN source
    assert r.returncode == 2 and "--pin-file" in r.stderr


# -- install-cert -------------------------------------------------------------------------------------------


Installable = tuple[SoftCA, SoftCA, object]


@pytest.fixture(scope="module")
def installable(ctl: Ctl) -> tuple[SoftCA, SoftCA, object]:
    """(the CA, another CA, the public key of token key 'inst')."""
    ctl.keygen("inst", "p256")
    return make_ca(ctl.dir, "Install CA"), make_ca(ctl.dir, "Other CA"), ctl.csr("inst").public_key()


def token_cert_objects(ctl: Ctl, label: str) -> list[str]:
    return ctl.pkcs11(f"""
        objs = session.get_objects({{Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: {label!r}}})
        print(json.dumps([bytes(o[Attribute.VALUE]).hex() for o in objs]))
    """)  # type: ignore[return-value]


def install(ctl: Ctl, ca: SoftCA, cert: x509.Certificate,
            name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = ctl.dir / f"installed-{name}.pem"
    cert_path = write_cert(ctl.dir / name, cert)
    r = ctl.run("install-cert", *ctl.token_args(), "--label", "inst", "--cert", str(cert_path),
                "--ca", str(ca.path), "--out", str(out), check=False)
    return r, out


def test_install_cert_accepts_matching_and_replaces(ctl: Ctl, installable: Installable) -> None:
    ca, _, public_key = installable
    for n in range(2):
        cert = ca.issue(public_key)
        r, out = install(ctl, ca, cert, f"ok{n}.pem")
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr
        assert x509.load_pem_x509_certificate(out.read_bytes()) == cert
        # Stored in the token under the key's label; an older certificate of that label is replaced.
        assert token_cert_objects(ctl, "inst") == [cert.public_bytes(serialization.Encoding.DER).hex()]


def test_install_cert_warns_without_nocheck(ctl: Ctl, installable: Installable) -> None:
    ca, _, public_key = installable
    r, out = install(ctl, ca, ca.issue(public_key, nocheck=False), "nocheck.pem")
    assert r.returncode == 0, r.stderr
    assert "ocsp-nocheck" in r.stderr
    assert out.exists()


REFUSALS: list[tuple[str, Callable[[SoftCA, SoftCA, object], x509.Certificate], str]] = [
    ("other-key", lambda ca, other, pk: ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key()),
     "is not the token key"),
    ("other-ca", lambda ca, other, pk: other.issue(pk), "not issued by the CA"),
    ("expired", lambda ca, other, pk: ca.issue(pk, not_before=NOW - dt.timedelta(days=30),
                                               not_after=NOW - dt.timedelta(days=1)), "expired"),
    ("not-yet-valid", lambda ca, other, pk: ca.issue(pk, not_before=NOW + dt.timedelta(days=1)),
     "not valid yet"),
    ("no-eku", lambda ca, other, pk: ca.issue(pk, eku=[]), "OCSPSigning"),
    ("wrong-eku", lambda ca, other, pk: ca.issue(pk, eku=[ExtendedKeyUsageOID.SERVER_AUTH]), "OCSPSigning"),
]


@pytest.mark.parametrize("name,make,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_install_cert_refuses(ctl: Ctl, installable: Installable, name: str,
                              make: Callable[[SoftCA, SoftCA, object], x509.Certificate],
                              message: str) -> None:
    ca, other, public_key = installable
    before = token_cert_objects(ctl, "inst")
    r, out = install(ctl, ca, make(ca, other, public_key), f"{name}.pem")
    assert r.returncode == 1
    assert "refusing the certificate" in r.stderr and message in r.stderr, r.stderr
    assert not out.exists()
    assert token_cert_objects(ctl, "inst") == before


def test_install_cert_forged_signature(ctl: Ctl, installable: Installable) -> None:
    # Same issuer name as the CA, signed by another key: the name matches, the signature does not.
    ca, _, public_key = installable
    impostor = SoftCA(ca.cert, ec.generate_private_key(ec.SECP256R1()), ca.path)
    r, _ = install(ctl, ca, impostor.issue(public_key), "forged.pem")
    assert r.returncode == 1
    assert "does not verify" in r.stderr


def test_install_cert_reports_an_unwritable_out_path(ctl: Ctl, installable: Installable, tmp_path: Path) -> None:
    """A certificate that cannot be written where --out says: a clear message and status 1, no traceback."""
    ca, _, public_key = installable
    locked = tmp_path / "locked"
    locked.mkdir()
    cert_path = write_cert(tmp_path / "unwritable.pem", ca.issue(public_key))
    root = os.geteuid() == 0
    if root:  # root ignores modes: the immutable attribute stops it
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True, check=False).returncode != 0:
            pytest.skip("running as root and chattr +i is not available here")
    else:
        locked.chmod(0o555)
    try:
        r = ctl.run("install-cert", *ctl.token_args(), "--label", "inst", "--cert", str(cert_path),
                    "--ca", str(ca.path), "--out", str(locked / "responder.pem"), check=False)
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o755)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    reason = "Operation not permitted (EPERM)" if root else "Permission denied (EACCES)"
    assert r.stderr.strip() == f"ocspctl: cannot write {locked / 'responder.pem'}: {reason} (the certificate is " \
                               "stored in the token)", r.stderr


# -- demo setup ---------------------------------------------------------------------------------------------

LAYOUT = [
    "token.pin", "so.pin",
    *(f"rsa-ca/{f}" for f in ("ca.pem", "ca-key.pem", "responder.pem", "index.txt", "leaf-good.pem",
                              "leaf-revoked.pem", "leaf-unknown.pem", "leaf-good2.pem")),
    *(f"ec-ca/{f}" for f in ("ca.pem", "ca-key.pem", "responder.pem", "crl.pem", "issued.txt",
                             "leaf-good.pem", "leaf-revoked.pem", "leaf-unknown.pem", "leaf-good2.pem")),
    "etc/frontend.toml", "etc/signer.toml", "etc/ca.d/demo-rsa.toml", "etc/ca.d/demo-ec.toml",
    *(f"tls/{f}" for f in ("ca.pem", "ca-key.pem", "signer.pem", "signer-key.pem", "frontend.pem",
                           "frontend-key.pem", "admin.pem", "admin-key.pem")),
]


DEMO_PORT = free_port()
SIGNER_ADDRESS = f"127.0.0.1:{free_port()}"  # TCP loopback: the demo's signer speaks mTLS


def demo_setup_args(d: Path) -> list[str]:
    return ["demo", "setup", "--dir", str(d), "--http-port", str(DEMO_PORT),
            "--signer-address", SIGNER_ADDRESS]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, softhsm_env: dict[str, str]) -> tuple[Path, Ctl]:
    # A token directory of its own: the demo token must be created from scratch here.
    base = tmp_path_factory.mktemp("ctl-demo-hsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = dict(softhsm_env, SOFTHSM2_CONF=str(conf))
    d = tmp_path_factory.mktemp("ctl-demo")
    c = Ctl(dir=d, env=env, pin_file=d / "token.pin", so_pin_file=d / "so.pin")
    c.run(*demo_setup_args(d))
    return d, c


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_demo_setup_layout_and_idempotent(demo_dir: tuple[Path, Ctl]) -> None:
    d, c = demo_dir
    for f in LAYOUT:
        assert (d / f).is_file(), f
    for f in ("token.pin", "so.pin", "rsa-ca/ca-key.pem", "ec-ca/ca-key.pem", "tls/ca-key.pem",
              "tls/signer-key.pem", "tls/frontend-key.pem", "tls/admin-key.pem"):
        assert (d / f).stat().st_mode & 0o077 == 0, f
    before = snapshot(d)
    r = c.run(*demo_setup_args(d))
    assert "nothing changed" in r.stdout
    assert snapshot(d) == before


def test_demo_setup_explains_a_token_whose_pin_is_lost(demo_dir: tuple[Path, Ctl],
                                                       tmp_path: Path) -> None:
    """A second demo directory on the same token (the first one's PIN file elsewhere): a clear error
    instead of a wrong-PIN login, and no new PIN file left behind to make the next try worse."""
    _, c = demo_dir
    other = tmp_path / "other"
    for _ in range(2):
        r = c.run(*demo_setup_args(other), check=False)
        assert r.returncode == 1
        assert "already exists" in r.stderr and "PIN is lost" in r.stderr, r.stderr
        assert not (other / "token.pin").exists()


def test_demo_pki_verifies(demo_dir: tuple[Path, Ctl]) -> None:
    d, _ = demo_dir
    for ca in ("rsa-ca", "ec-ca"):
        for f in ("responder.pem", "leaf-good.pem", "leaf-revoked.pem", "leaf-unknown.pem"):
            r = subprocess.run(["openssl", "verify", "-CAfile", str(d / ca / "ca.pem"), str(d / ca / f)],
                               capture_output=True, text=True, check=False)
            assert r.returncode == 0, r.stdout + r.stderr
        responder = x509.load_pem_x509_certificate((d / ca / "responder.pem").read_bytes())
        eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
        responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
        assert responder.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
        leaf = x509.load_pem_x509_certificate((d / ca / "leaf-good.pem").read_bytes())
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert [a.access_location.value for a in aia] == [f"http://127.0.0.1:{DEMO_PORT}/"]
    ca_keys = {ca: x509.load_pem_x509_certificate((d / ca / "ca.pem").read_bytes()).public_key()
               for ca in ("rsa-ca", "ec-ca")}
    assert ca_keys["rsa-ca"].key_size == 2048  # type: ignore[union-attr]
    assert ca_keys["ec-ca"].curve.name == "secp256r1"  # type: ignore[union-attr]


def test_demo_responder_keys_in_token(demo_dir: tuple[Path, Ctl]) -> None:
    d, c = demo_dir
    # The demo token has its own label and PIN file.
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, pkcs11
        from pkcs11 import Attribute, ObjectClass
        session = pkcs11.lib({SOFTHSM_MODULE!r}).get_token(token_label="ocsp-demo").open(
            user_pin=open({str(d / 'token.pin')!r}).read().strip())
        out = {{}}
        for label in ("demo-rsa-responder", "demo-ec-responder"):
            priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
            query = {{Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}}
            certs = list(session.get_objects(query))
            out[label] = [priv.key_type.name, priv[Attribute.SENSITIVE], priv[Attribute.EXTRACTABLE],
                          len(certs)]
        print(json.dumps(out))
    """)], env=c.env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"demo-rsa-responder": ["RSA", True, False, 1],
                                    "demo-ec-responder": ["EC", True, False, 1]}


def test_demo_configs(demo_dir: tuple[Path, Ctl]) -> None:
    import tomllib

    d, _ = demo_dir
    signer = tomllib.loads((d / "etc/signer.toml").read_text())
    assert signer["token"] == {"module": SOFTHSM_MODULE, "label": "ocsp-demo",
                               "pin_file": str(d / "token.pin")}
    assert signer["listen"]["address"] == SIGNER_ADDRESS
    assert signer["tls"] == {"cert": str(d / "tls/signer.pem"), "key": str(d / "tls/signer-key.pem"),
                             "client_ca": str(d / "tls/ca.pem"),
                             "allowed_clients": ["cn:ocsp-frontend", "cn:ocsp-admin"]}
    assert Path(signer["ca_dir"]).is_absolute()
    frontend = tomllib.loads((d / "etc/frontend.toml").read_text())
    assert frontend["listen"]["port"] == DEMO_PORT
    assert frontend["signer"]["address"] == signer["listen"]["address"]
    assert {k: v for k, v in frontend["signer"].items() if k.startswith("tls_")} == {
        "tls_ca": str(d / "tls/ca.pem"), "tls_cert": str(d / "tls/frontend.pem"),
        "tls_key": str(d / "tls/frontend-key.pem")}
    rsa = tomllib.loads((d / "etc/ca.d/demo-rsa.toml").read_text())
    assert rsa["status"]["source"] == "index" and rsa["status"]["path"] == str(d / "rsa-ca/index.txt")
    assert rsa["responder"]["key_label"] == "demo-rsa-responder"
    ecc = tomllib.loads((d / "etc/ca.d/demo-ec.toml").read_text())
    assert ecc["status"] == {"source": "crl", "path": str(d / "ec-ca/crl.pem"),
                             "issued_serials": str(d / "ec-ca/issued.txt"), "unissued": "unknown"}


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_demo_index_txt_format(demo_dir: tuple[Path, Ctl]) -> None:
    d, _ = demo_dir
    lines = [line.split("\t") for line in (d / "rsa-ca/index.txt").read_text().splitlines()]
    assert all(len(f) == 6 and f[4] == "unknown" and f[5].startswith("/O=OCSP Demo/CN=") for f in lines)
    by_serial = {int(f[3], 16): f for f in lines}
    assert serial_of(d / "rsa-ca/leaf-unknown.pem") not in by_serial
    good = by_serial[serial_of(d / "rsa-ca/leaf-good.pem")]
    assert good[0] == "V" and good[2] == "" and len(good[1]) == 13 and good[1].endswith("Z")
    assert good[3] == good[3].upper() and len(good[3]) % 2 == 0
    revoked = by_serial[serial_of(d / "rsa-ca/leaf-revoked.pem")]
    assert revoked[0] == "R" and revoked[2].endswith(",keyCompromise") and len(revoked[2].split(",")[0]) == 13


def test_frontend_reads_the_demo_status_files(demo_dir: tuple[Path, Ctl]) -> None:
    """The demo writes its index.txt, CRL and issued list as the frontend's own parsers read them."""
    from shared.ocsp.types import CertStatus, RevocationReason
    from shared.status.crl import parse_serial_list, revoked_entries, verified_crl
    from shared.status.index_txt import parse_index

    d, _ = demo_dir
    index = parse_index((d / "rsa-ca/index.txt").read_bytes().decode(), dt.timedelta(hours=24))
    assert index.status(serial_of(d / "rsa-ca/leaf-good.pem")).status is CertStatus.GOOD
    revoked = index.status(serial_of(d / "rsa-ca/leaf-revoked.pem"))
    assert revoked.status is CertStatus.REVOKED and revoked.revocation is not None
    assert revoked.revocation.reason is RevocationReason.KEY_COMPROMISE
    assert index.status(serial_of(d / "rsa-ca/leaf-unknown.pem")).status is CertStatus.UNKNOWN
    ca = x509.load_pem_x509_certificate((d / "ec-ca/ca.pem").read_bytes())
    crl = revoked_entries(verified_crl((d / "ec-ca/crl.pem").read_bytes(), ca))
    assert crl[serial_of(d / "ec-ca/leaf-superseded.pem")].status is CertStatus.REVOKED
    issued = parse_serial_list((d / "ec-ca/issued.txt").read_text())
    assert serial_of(d / "ec-ca/leaf-good.pem") in issued and serial_of(d / "ec-ca/leaf-good.pem") not in crl
    assert serial_of(d / "ec-ca/leaf-unknown.pem") not in issued


def openssl_index_status(d: Path, leaf: str) -> str:
    """Ask OpenSSL's own responder, reading our index.txt (signing with the demo CA key)."""
    ca = d / "rsa-ca"
    req, resp = d / "req.der", d / "resp.der"
    subprocess.run(["openssl", "ocsp", "-issuer", str(ca / "ca.pem"), "-cert", str(ca / leaf), "-no_nonce",
                    "-reqout", str(req)], check=True, capture_output=True)
    subprocess.run(["openssl", "ocsp", "-index", str(ca / "index.txt"), "-CA", str(ca / "ca.pem"),
                    "-rsigner", str(ca / "ca.pem"), "-rkey", str(ca / "ca-key.pem"), "-reqin", str(req),
                    "-respout", str(resp)], check=True, capture_output=True)
    r = subprocess.run(["openssl", "ocsp", "-respin", str(resp), "-issuer", str(ca / "ca.pem"), "-cert",
                        str(ca / leaf), "-CAfile", str(ca / "ca.pem"), "-no_nonce"],
                       capture_output=True, text=True, check=False)
    assert "Response verify OK" in r.stderr + r.stdout, r.stderr
    return r.stdout


@pytest.mark.parametrize("leaf,expected", [("leaf-good.pem", "good"), ("leaf-revoked.pem", "revoked"),
                                           ("leaf-unknown.pem", "unknown"),
                                           ("leaf-superseded.pem", "revoked")])
def test_openssl_reads_demo_index(demo_dir: tuple[Path, Ctl], leaf: str, expected: str) -> None:
    d, _ = demo_dir
    out = openssl_index_status(d, leaf)
    assert f"{leaf}: {expected}" in out
    if leaf == "leaf-revoked.pem":
        assert "Reason: keyCompromise" in out


def test_demo_crl_and_issued(demo_dir: tuple[Path, Ctl]) -> None:
    d, _ = demo_dir
    ca = x509.load_pem_x509_certificate((d / "ec-ca/ca.pem").read_bytes())
    crl = x509.load_pem_x509_crl((d / "ec-ca/crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=7)
    reasons = {rc.serial_number: rc.extensions.get_extension_for_class(x509.CRLReason).value.reason
               for rc in crl}
    assert reasons[serial_of(d / "ec-ca/leaf-revoked.pem")] == x509.ReasonFlags.key_compromise
    assert reasons[serial_of(d / "ec-ca/leaf-superseded.pem")] == x509.ReasonFlags.superseded
    assert reasons[serial_of(d / "ec-ca/leaf-ceased.pem")] == x509.ReasonFlags.cessation_of_operation
    issued = {int(x, 16) for x in (d / "ec-ca/issued.txt").read_text().split()}
    assert serial_of(d / "ec-ca/leaf-good.pem") in issued
    assert serial_of(d / "ec-ca/leaf-revoked.pem") in issued
    assert serial_of(d / "ec-ca/leaf-unknown.pem") not in issued
    r = subprocess.run(["openssl", "crl", "-in", str(d / "ec-ca/crl.pem"), "-CAfile", str(d / "ec-ca/ca.pem"),
                        "-noout"], capture_output=True, text=True, check=False)
    assert "verify OK" in r.stdout + r.stderr


def test_demo_revoke(demo_dir: tuple[Path, Ctl]) -> None:
    d, c = demo_dir
    # RSA: index.txt, then OpenSSL's responder agrees.
    serial = serial_of(d / "rsa-ca/leaf-good3.pem")
    c.run("demo", "revoke", "--dir", str(d), "--ca", "rsa", "--serial", f"{serial:x}",
          "--reason", "superseded")
    assert "leaf-good3.pem: revoked" in openssl_index_status(d, "leaf-good3.pem")
    again = c.run("demo", "revoke", "--dir", str(d), "--ca", "rsa", "--serial", f"{serial:X}")
    assert "already revoked" in again.stdout
    # EC: a new CRL with a higher number, the old entries kept.
    old = x509.load_pem_x509_crl((d / "ec-ca/crl.pem").read_bytes())
    serial = serial_of(d / "ec-ca/leaf-good3.pem")
    c.run("demo", "revoke", "--dir", str(d), "--ca", "ec", "--serial", f"{serial:X}", "--reason",
          "cessationOfOperation")
    new = x509.load_pem_x509_crl((d / "ec-ca/crl.pem").read_bytes())
    number = lambda crl: crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number(new) == number(old) + 1
    assert {rc.serial_number for rc in new} == {rc.serial_number for rc in old} | {serial}
    entry = new.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.cessation_of_operation
    # Not issued / bad reason: refused.
    unknown = serial_of(d / "ec-ca/leaf-unknown.pem")
    for ca in ("ec", "rsa"):
        r = c.run("demo", "revoke", "--dir", str(d), "--ca", ca, "--serial", f"{unknown:X}", check=False)
        assert r.returncode == 1 and "never issued" in r.stderr
    r = c.run("demo", "revoke", "--dir", str(d), "--ca", "ec", "--serial", f"{serial:X}", "--reason", "bogus",
              check=False)
    assert r.returncode == 1 and "unknown revocation reason" in r.stderr
    # A later setup keeps the runtime revocations.
    c.run(*demo_setup_args(d))
    assert "leaf-good3.pem: revoked" in openssl_index_status(d, "leaf-good3.pem")
    crl = x509.load_pem_x509_crl((d / "ec-ca/crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


def test_example_configs_load(demo_dir: tuple[Path, Ctl], tmp_path: Path) -> None:
    """etc/*.toml (the documented production examples) pass both loaders once their paths exist."""
    from frontend.config import load_frontend_config
    from signer.config import load_signer_config

    d, _ = demo_dir
    (tmp_path / "ca.d").mkdir()
    for name in ("signer.toml", "frontend.toml"):
        (tmp_path / name).write_text((ROOT / "etc" / name).read_text().replace("/etc/ocsp/token.pin",
                                                                               str(d / "token.pin")))
    example = (ROOT / "etc/ca.d/example.toml").read_text()
    for old, new in (("/etc/ocsp/example/ca.pem", d / "rsa-ca/ca.pem"),
                     ("/var/lib/ocsp-signer/responders/example.pem", d / "rsa-ca/responder.pem"),
                     ("/var/lib/ocsp/example/index.txt", d / "rsa-ca/index.txt")):
        assert old in example
        example = example.replace(old, str(new))
    (tmp_path / "ca.d/example.toml").write_text(example)
    frontend = load_frontend_config(tmp_path / "frontend.toml")
    assert [ca.name for ca in frontend.cas] == ["example-ca"]
    signer = load_signer_config(tmp_path / "signer.toml")
    assert [r.name for r in signer.responders] == ["example-ca"]
    assert signer.responders[0].key_label == "example-responder"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_demo_serve(demo_dir: tuple[Path, Ctl], stop_signal: int) -> None:
    """`demo serve` starts both programs, prints commands that work, and stops both on a signal."""
    d, c = demo_dir
    proc = subprocess.Popen([tool("ocspctl"), "demo", "serve", "--dir", str(d)], env=c.env, cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, acc=acc: acc.extend(iter(s.readline, "")), daemon=True)
               for s, acc in ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()
    try:
        def ready() -> bool:
            assert proc.poll() is None, "".join(out + err)
            return any(line.startswith("try:") for line in out)

        wait_until(ready, 60, "demo serve to be ready")
        wait_until(lambda: sum(line.startswith("  openssl ocsp") for line in out) == 6, 5, "the commands")
        commands = [line.split() for line in out if line.startswith("  openssl ocsp")]
        for argv, expected in zip(commands[:3], ("good", "revoked", "unknown")):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert "Response verify OK" in r.stdout + r.stderr, r.stdout + r.stderr
            assert f"leaf-{expected}.pem: {expected}" in r.stdout
        proc.send_signal(stop_signal)
        assert proc.wait(30) == 0, "".join(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in readers:
        t.join(5)
    assert any(line.startswith("stopped") for line in out)
    # Both children are gone: nothing listens on the port any more.
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", DEMO_PORT)) != 0
