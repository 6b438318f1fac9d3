"""``ocspctl demo setup``: create or complete the demo PKI in a directory; idempotent.

    ocspctl demo setup --dir D [--http-port 2560] [--signer-address 127.0.0.1:50051] [--crl-refresh]

Two CAs with software keys (RSA, index.txt-backed; ECDSA P-256, CRL-backed with an issued list), a
responder key per CA generated in the demo's token with its delegated responder certificate, leaves
(some revoked), the audit key, the transport PKI and the configuration files. What exists and still
fits is kept; without --http-port / --signer-address the demo keeps the ones it has.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_public_key,
)

from signer.ctl.common import (
    CtlError,
    load_certificate,
    ocspctl_command,
    open_token,
    read_secret_file,
    same_public_key,
    say,
    spki,
    utcnow,
    write_if_changed,
)
from signer.ctl.demo.ca_db import (
    IndexEntry,
    index_revoke,
    index_serial,
    index_time,
    openssl_oneline,
    read_crl_entries,
    read_index,
    read_issued,
    write_crl,
    write_index,
    write_issued,
)
from signer.ctl.demo.configs import demo_configs
from signer.ctl.demo.layout import (
    DEFAULT_HTTP_PORT,
    DEFAULT_SIGNER_ADDRESS,
    DEMO_AUDIT_LABEL,
    DEMO_CAS,
    DEMO_LEAVES,
    DEMO_TOKEN,
    DemoCA,
)
from signer.ctl.demo.pki import (
    issue_leaf,
    issue_responder_cert,
    issued_by,
    load_pem_key,
    ocsp_url,
    self_signed_ca,
)
from signer.ctl.demo.token_store import record_token_store
from signer.ctl.demo.transport import ensure_transport_pki
from signer.ctl.softhsm import softhsm_init_token, softhsm_token_labels
from signer.ctl.token_cmds import install_certificate, store_certificate
from signer.files import write_atomic
from signer.token import TokenError
from signer.unix_socket import MAX_PATH_BYTES, longest_private_path


def _ensure_pin_file(path: Path, log: list[str]) -> str:
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18) + "\n")
            log.append(f"wrote {path} (0600)")
    return read_secret_file(path, str(path))


def _ensure_ca(d: Path, spec: DemoCA, now: dt.datetime, log: list[str]) -> tuple[Any, Any]:
    """The CA certificate and software key, reused when both exist and belong together."""
    cert_path, key_path = d / "ca.pem", d / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = load_certificate(cert_path, "demo CA certificate")
        key = load_pem_key(key_path)
        if same_public_key(spki(cert.public_key()), spki(key.public_key())):
            return cert, key
        raise CtlError(f"{cert_path} and {key_path} do not belong together; remove {d} to start over")
    if spec.key == "rsa":
        key: Any = rsa.generate_private_key(65537, 2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_ca(key, spec.subject_cn, now)
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_atomic(key_path, key_pem, 0o600)
    write_atomic(cert_path, cert.public_bytes(Encoding.PEM))
    log.append(f"created CA {spec.subject_cn!r} in {d}")
    return cert, key


def _ensure_responder(token: Any, ca_dir: Path, spec: DemoCA, ca_cert: Any, ca_key: Any, now: dt.datetime,
                      log: list[str]) -> Any:
    try:
        if token.has_key(spec.responder_label):
            token_spki = token.public_key(spec.responder_label)
        else:
            token_spki = token.generate_key(spec.responder_label, spec.responder_spec)
            log.append(f"generated {spec.responder_spec} key {spec.responder_label!r} "
                       f"in token {DEMO_TOKEN!r}")
    except TokenError as e:
        raise CtlError(str(e)) from None
    path = ca_dir / "responder.pem"
    if path.exists():
        cert = load_certificate(path, "demo responder certificate")
        fresh = cert.not_valid_after_utc - now > dt.timedelta(days=30)
        if issued_by(cert, ca_cert) and same_public_key(spki(cert.public_key()), token_spki) and fresh:
            if cert.public_bytes(Encoding.DER) not in token.certificates(spec.responder_label):
                store_certificate(token, spec.responder_label, cert.public_bytes(Encoding.DER))
            return cert
    cert = issue_responder_cert(ca_cert, ca_key, token_spki, spec.responder_cn, now)
    install_certificate(token, spec.responder_label, cert, ca_cert, path)
    log.append(f"issued responder certificate {path} for token key {spec.responder_label!r}")
    return cert


def _ensure_leaves(ca_dir: Path, spec: DemoCA, ca_cert: Any, ca_key: Any, url: str, now: dt.datetime,
                   log: list[str]) -> dict[str, Any]:
    leaves = {}
    for stem in DEMO_LEAVES:
        path = ca_dir / f"{stem}.pem"
        if path.exists():
            cert = load_certificate(path, "demo leaf certificate")
            if issued_by(cert, ca_cert) and ocsp_url(cert) == url and cert.not_valid_after_utc > now:
                leaves[stem] = cert
                continue
        cert = issue_leaf(ca_cert, ca_key, f"{stem.removeprefix('leaf-')}.{spec.name}.demo", url, now)
        write_atomic(path, cert.public_bytes(Encoding.PEM))
        log.append(f"issued {path}")
        leaves[stem] = cert
    return leaves


def _record_index(ca_dir: Path, leaves: dict[str, Any], now: dt.datetime, log: list[str]) -> None:
    path = ca_dir / "index.txt"
    entries = read_index(path)
    by_serial = {int(e.serial, 16): e for e in entries}
    for stem, initial in DEMO_LEAVES.items():
        if initial == "unissued":
            continue
        cert = leaves[stem]
        if cert.serial_number not in by_serial:
            entry = IndexEntry("V", index_time(cert.not_valid_after_utc), "",
                               index_serial(cert.serial_number), "unknown", openssl_oneline(cert.subject))
            entries.append(entry)
            by_serial[cert.serial_number] = entry
        if initial is not None and by_serial[cert.serial_number].status != "R":
            index_revoke(entries, cert.serial_number, now, initial)
    if write_index(path, entries):
        log.append(f"wrote {path}")


def _record_crl(ca_dir: Path, ca_cert: Any, ca_key: Any, leaves: dict[str, Any], now: dt.datetime,
                refresh: bool, log: list[str]) -> None:
    issued_path, crl_path = ca_dir / "issued.txt", ca_dir / "crl.pem"
    issued = read_issued(issued_path)
    entries, number, crl = read_crl_entries(crl_path, ca_cert)
    changed = crl is None or refresh or crl.next_update_utc - now < dt.timedelta(days=1)
    for stem, initial in DEMO_LEAVES.items():
        if initial == "unissued":
            continue
        serial = leaves[stem].serial_number
        if serial not in issued:
            issued.append(serial)
        if initial is not None and serial not in entries:
            entries[serial] = (now, initial)
            changed = True
    if write_issued(issued_path, issued):
        log.append(f"wrote {issued_path}")
    if changed:
        write_crl(crl_path, ca_cert, ca_key, entries, number + 1, now)
        log.append(f"issued CRL number {number + 1} at {crl_path}")


def _ensure_audit_key(token: Any, d: Path, log: list[str]) -> None:
    """The key that signs audit checkpoints, in the token; its public key for auditors in D/audit/."""
    if not token.has_key(DEMO_AUDIT_LABEL):
        token.generate_key(DEMO_AUDIT_LABEL, "p256")
        log.append(f"generated p256 audit key {DEMO_AUDIT_LABEL!r} in token {DEMO_TOKEN!r}")
    public = load_der_public_key(token.public_key(DEMO_AUDIT_LABEL))
    path = d / "audit-key.pem"
    if write_if_changed(path, public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)):
        log.append(f"wrote {path} (verify the audit log with: {ocspctl_command()} audit verify "
                   f"{d / 'audit'}/*.jsonl --pubkey {path})")


def demo_setup(d: Path, http_port: int, signer_address: str, module: str, crl_refresh: bool) -> list[str]:
    log: list[str] = []
    d.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "etc/ca.d", *(s.dir_name for s in DEMO_CAS.values())):
        (d / sub).mkdir(parents=True, exist_ok=True)
    new_pin = not (d / "token.pin").exists()
    if (d / "audit-key.pem").exists() and DEMO_TOKEN not in softhsm_token_labels():
        # Set up before, but its token is not in this store: making a new one would re-key the demo
        # (new responder keys and audit key, and the audit log no longer verifies).
        raise CtlError(f"{d} was set up with another SoftHSM token store: its token {DEMO_TOKEN!r} is not in "
                       f"SOFTHSM2_CONF={os.environ.get('SOFTHSM2_CONF', '(not set: the system store)')}; run "
                       "with the configuration it was made with (make: var/softhsm2.conf), or remove "
                       f"{d} to start a new demo")
    pin = _ensure_pin_file(d / "token.pin", log)
    so_pin = _ensure_pin_file(d / "so.pin", log)
    if softhsm_init_token(DEMO_TOKEN, pin, so_pin):
        log.append(f"initialised SoftHSM token {DEMO_TOKEN!r}")
    elif new_pin:
        # The token outlived the demo directory that made it (its PIN file is gone): logging in
        # would only fail on a wrong PIN, so say what to do instead (and leave no new PIN behind).
        for name in ("token.pin", "so.pin"):
            (d / name).unlink(missing_ok=True)
        raise CtlError(f"SoftHSM token {DEMO_TOKEN!r} already exists, but {d / 'token.pin'} was just created, "
                       f"so its PIN is lost: remove the token's directory (SOFTHSM2_CONF="
                       f"{os.environ.get('SOFTHSM2_CONF', '?')} names it; with make: rm -rf var) and run again")
    token = open_token(module, DEMO_TOKEN, d / "token.pin", None)
    if (recorded := record_token_store(d)) is not None:
        log.append(recorded)
    now = utcnow()
    url = f"http://127.0.0.1:{http_port}/"
    try:
        for spec in DEMO_CAS.values():
            ca_dir = d / spec.dir_name
            ca_cert, ca_key = _ensure_ca(ca_dir, spec, now, log)
            _ensure_responder(token, ca_dir, spec, ca_cert, ca_key, now, log)
            leaves = _ensure_leaves(ca_dir, spec, ca_cert, ca_key, url, now, log)
            if spec.source == "index":
                _record_index(ca_dir, leaves, now, log)
            else:
                _record_crl(ca_dir, ca_cert, ca_key, leaves, now, crl_refresh, log)
        _ensure_audit_key(token, d, log)
    finally:
        token.close()
    ensure_transport_pki(d, now, log)  # mTLS between frontend and signer (used for host:port addresses)
    for path, text in demo_configs(d, http_port, signer_address, module).items():
        if write_if_changed(path, text.encode()):
            log.append(f"wrote {path}")
    return log


def _current_settings(d: Path) -> tuple[int | None, str | None]:
    """The HTTP port and signer address a demo directory is set up with (None: not set up)."""
    port = address = None
    try:
        port = int(tomllib.loads((d / "etc" / "frontend.toml").read_text())["listen"]["port"])
        address = str(tomllib.loads((d / "etc" / "signer.toml").read_text())["listen"]["address"])
    except (OSError, KeyError, TypeError, ValueError, tomllib.TOMLDecodeError):
        pass
    return port, address


def cmd_demo_setup(args: argparse.Namespace) -> int:
    d = args.dir.resolve()
    # Without --http-port / --signer-address the demo keeps what it has: a change re-issues the leaf
    # certificates (their AIA URL names the port) and rewrites the configs.
    current_port, current_address = _current_settings(d)
    args.http_port = args.http_port or current_port or DEFAULT_HTTP_PORT
    address = args.signer_address or current_address or DEFAULT_SIGNER_ADDRESS
    if address.startswith("unix:") and longest_private_path(Path(address.removeprefix("unix:"))) > MAX_PATH_BYTES:
        raise CtlError(f"the signer socket path {address} is too long: the signer binds sockets of up to "
                       f"{longest_private_path(Path(address.removeprefix('unix:')))} bytes beside it, and a unix "
                       f"socket allows {MAX_PATH_BYTES}; use a shorter --dir or give --signer-address")
    log = demo_setup(d, args.http_port, address, args.module, args.crl_refresh)
    for line in log:
        say(f"  {line}")
    say(f"demo PKI {'ready' if log else 'already complete, nothing changed'} in {d}")
    say(f"  token {DEMO_TOKEN!r} (PIN in {d / 'token.pin'}), keys "
        + ", ".join(repr(s.responder_label) for s in DEMO_CAS.values()))
    for spec in DEMO_CAS.values():
        source = "index.txt" if spec.source == "index" else "crl.pem + issued.txt"
        say(f"  {spec.subject_cn}: {d / spec.dir_name} ({source}); leaves: " + ", ".join(DEMO_LEAVES))
    say(f"  configs in {d / 'etc'}; OCSP URL http://127.0.0.1:{args.http_port}/, signer at {address}")
    say(f"next: {ocspctl_command()} demo serve --dir {d}")
    return 0
