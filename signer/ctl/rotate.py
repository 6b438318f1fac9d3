"""ocspctl rotate: switch a CA's responder in the running signer.

    ocspctl rotate --ca NAME --cert FILE [--key-label LABEL] [--config signer.toml | --socket PATH]
    ocspctl rotate ... --address HOST:PORT --tls-cert F --tls-key F --tls-ca F     (mTLS admin identity)

It asks the running signer (Admin.Rotate) to check the certificate and switch to it; the signer writes
it to the CA's responder.cert file (and a new key label to the ca.d file) itself.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from signer.ctl.common import CtlError, say

DEFAULT_CONFIG = Path("/etc/ocsp/signer.toml")
RPC_TIMEOUT = 30.0


def admin_socket_from_config(path: Path) -> Path:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise CtlError(f"cannot read {path}: {e.strerror or e}; give --socket or --config") from None
    except tomllib.TOMLDecodeError as e:
        raise CtlError(f"{path}: not valid TOML: {e}") from None
    socket = data.get("admin", {}).get("socket") if isinstance(data.get("admin"), dict) else None
    if not isinstance(socket, str) or not socket:
        raise CtlError(f"{path} has no [admin] socket; configure one (and restart the signer), or give "
                       "--address with an admin client certificate")
    p = Path(socket)
    return p if p.is_absolute() else path.parent / p


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    if args.address:
        if not (args.tls_cert and args.tls_key and args.tls_ca):
            raise CtlError("--address needs --tls-cert, --tls-key and --tls-ca (an admin client certificate)")
        try:
            creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes(),
                                                 private_key=args.tls_key.read_bytes(),
                                                 certificate_chain=args.tls_cert.read_bytes())
        except OSError as e:
            raise CtlError(f"cannot read {e.filename}: {e.strerror or e}") from None
        return grpc.secure_channel(args.address, creds), args.address
    socket = args.socket or admin_socket_from_config(args.config)
    target = f"unix:{Path(socket).resolve()}"
    return grpc.insecure_channel(target), target


def cmd_rotate(args: argparse.Namespace) -> int:
    import grpc

    from shared.rpc import signer_pb2 as pb
    from shared.rpc import signer_pb2_grpc as pb_grpc

    try:
        cert = args.cert.read_bytes()
    except OSError as e:
        raise CtlError(f"cannot read {args.cert}: {e.strerror or e}") from None
    channel, target = _channel(args)
    with channel:
        try:
            reply = pb_grpc.AdminStub(channel).Rotate(
                pb.RotateRequest(ca=args.ca, certificate=cert, key_label=args.key_label or ""),
                timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CtlError(f"the signer is not reachable at {target}: {e.details()}") from None
            raise CtlError(f"rotation refused ({code.name}): {e.details()}") from None
    say(f"CA {args.ca!r} now signs with responder generation {reply.generation}: key {reply.key_label!r}, "
        f"certificate SHA-256 {reply.responder_fingerprint}")
    for note in reply.notes:
        say(f"  {note}")
    return 0


def add_parser(sub: Any) -> None:
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
