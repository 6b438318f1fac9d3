"""ocspctl rotate, and ocspctl demo reissue-responder.

    ocspctl rotate --ca NAME --cert FILE [--key-label LABEL] [--config signer.toml | --socket PATH]
    ocspctl rotate ... --address HOST:PORT --tls-cert F --tls-key F --tls-ca F     (mTLS admin identity)
    ocspctl demo reissue-responder --dir D --ca rsa|ec [--rekey] [--days N]

``rotate`` asks the running signer (Admin.Rotate) to check the certificate and switch to it; the signer
writes it to the CA's responder.cert file (and a new key label to the ca.d file) itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import secrets
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/ocsp/signer.toml")
RPC_TIMEOUT = 30.0


def _ctl() -> Any:
    from signer.ctl import main as ctl

    return ctl


def admin_socket_from_config(path: Path) -> Path:
    ctl = _ctl()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ctl.CtlError(f"cannot read {path}: {e.strerror or e}; give --socket or --config") from None
    except tomllib.TOMLDecodeError as e:
        raise ctl.CtlError(f"{path}: not valid TOML: {e}") from None
    socket = data.get("admin", {}).get("socket") if isinstance(data.get("admin"), dict) else None
    if not isinstance(socket, str) or not socket:
        raise ctl.CtlError(f"{path} has no [admin] socket; configure one (and restart the signer), or give "
                           "--address with an admin client certificate")
    p = Path(socket)
    return p if p.is_absolute() else path.parent / p


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    ctl = _ctl()
    if args.address:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise ctl.CtlError("--address needs --tls-cert, --tls-key and --tls-ca (an admin client certificate)")
        try:
            creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes(),
                                                 private_key=args.tls_key.read_bytes(),
                                                 certificate_chain=args.tls_cert.read_bytes())
        except OSError as e:
            raise ctl.CtlError(f"cannot read {e.filename}: {e.strerror or e}") from None
        return grpc.secure_channel(args.address, creds), args.address
    socket = args.socket or admin_socket_from_config(args.config)
    target = f"unix:{Path(socket).resolve()}"
    return grpc.insecure_channel(target), target


def cmd_rotate(args: argparse.Namespace) -> int:
    import grpc

    from shared.rpc import signer_pb2 as pb
    from shared.rpc import signer_pb2_grpc as pb_grpc

    ctl = _ctl()
    try:
        cert = args.cert.read_bytes()
    except OSError as e:
        raise ctl.CtlError(f"cannot read {args.cert}: {e.strerror or e}") from None
    channel, target = _channel(args)
    with channel:
        try:
            reply = pb_grpc.AdminStub(channel).Rotate(
                pb.RotateRequest(ca=args.ca, certificate=cert, key_label=args.key_label or ""),
                timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ctl.CtlError(f"the signer is not reachable at {target}: {e.details()}") from None
            raise ctl.CtlError(f"rotation refused ({code.name}): {e.details()}") from None
    ctl.say(f"CA {args.ca!r} now signs with responder generation {reply.generation}: key {reply.key_label!r}, "
            f"certificate SHA-256 {reply.responder_fingerprint}")
    for note in reply.notes:
        ctl.say(f"  {note}")
    return 0


def cmd_demo_reissue_responder(args: argparse.Namespace) -> int:
    """A new responder certificate for a demo CA, for the same token key or (--rekey) a new one."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from signer.token import TokenError

    ctl = _ctl()
    d = args.dir.resolve()
    spec = ctl.DEMO_CAS[args.ca]
    ca_dir = d / spec.dir_name
    ca_cert = ctl.load_certificate(ca_dir / "ca.pem", "demo CA certificate")
    ca_key = ctl._load_pem_key(ca_dir / "ca-key.pem")
    label = spec.responder_label
    ca_file = d / "etc" / "ca.d" / f"{spec.name}.toml"
    try:
        label = tomllib.loads(ca_file.read_text())["responder"]["key_label"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    token = ctl.open_token(args.module, ctl.DEMO_TOKEN, d / "token.pin", None)
    now = ctl.utcnow()
    try:
        if args.rekey:
            label = f"{spec.responder_label}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
            try:
                token.generate_key(label, spec.responder_spec)
            except TokenError as e:
                raise ctl.CtlError(str(e)) from None
        try:
            spki = token.public_key(label)
        except TokenError as e:
            raise ctl.CtlError(str(e)) from None
        cert = ctl.issue_responder_cert(ca_cert, ca_key, spki, spec.responder_cn, now,
                                        dt.timedelta(days=args.days))
        path = ca_dir / f"responder-{cert.serial_number:X}.pem"
        ctl.install_certificate(token, label, cert, ca_cert, path)
    finally:
        token.close()
    ctl.say(f"cert: {path}")
    ctl.say(f"key_label: {label}")
    ctl.say(f"serial: {cert.serial_number:X}, valid until {cert.not_valid_after_utc:{ctl.TIME_FMT}}, SHA-256 "
            f"{hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()}")
    key_opt = f" --key-label {label}" if args.rekey else ""
    ctl.say(f"switch: {ctl.ocspctl_command()} rotate --config {d / 'etc' / 'signer.toml'} --ca {spec.name} --cert {path}"
            f"{key_opt}")
    return 0


def add_parsers(sub: Any, demo: Any) -> None:
    ctl = _ctl()
    p = sub.add_parser("rotate", help="switch a CA's responder to a new certificate (and key) in the "
                                      "running signer")
    p.add_argument("--ca", required=True, help="CA name (ca.d file `name`, default the file name)")
    p.add_argument("--cert", type=Path, required=True, help="the new responder certificate (PEM or DER)")
    p.add_argument("--key-label", help="token key of the certificate, for a re-key (default: the current key)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help=f"signer.toml, to find [admin] socket (default {DEFAULT_CONFIG})")
    where.add_argument("--socket", type=Path, help="the signer's admin unix socket")
    where.add_argument("--address", help="the signer's main listener HOST:PORT (mTLS; needs an identity in "
                                         "[admin] allowed_clients)")
    p.add_argument("--tls-cert", type=Path, help="admin client certificate (PEM), with --address")
    p.add_argument("--tls-key", type=Path, help="its private key (PEM), with --address")
    p.add_argument("--tls-ca", type=Path, help="CA of the signer's server certificate (PEM), with --address")
    p.set_defaults(func=cmd_rotate)

    p = demo.add_parser("reissue-responder", help="issue a new responder certificate for a demo CA "
                                                  "(--rekey: for a new token key)")
    p.add_argument("--dir", type=Path, required=True, help="demo directory")
    p.add_argument("--ca", required=True, choices=list(ctl.DEMO_CAS), help="which demo CA")
    p.add_argument("--rekey", action="store_true", help="generate a new key in the token, with a new label")
    p.add_argument("--days", type=float, default=ctl.RESPONDER_VALIDITY.days, help="validity in days")
    p.add_argument("--module", default=ctl.DEFAULT_MODULE, help=f"PKCS#11 module (default {ctl.DEFAULT_MODULE})")
    p.set_defaults(func=cmd_demo_reissue_responder)
