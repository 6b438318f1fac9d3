"""mTLS on the signer's gRPC listener: server credentials and the client-identity interceptor.

The TLS handshake happens inside gRPC core: a client without a certificate, with one from another
CA, or with an expired one never reaches Python (``signer.handshake_log`` gets those refusals into
the log). What reaches Python is a verified chain; ``ClientAuthInterceptor`` then checks, per RPC:

- the connection is TLS 1.3 (``ssl_tls_version`` in the auth context; belt and braces behind the
  cipher-suite restriction of ``signer.handshake_log.prepare_grpc_environment``),
- the certificate carries an identity on ``[tls] allowed_clients``, when that list is configured.
  (Which of the allowed clients may call the Admin service is ``[admin] allowed_clients``' business.)

Refusals abort with UNAUTHENTICATED (no usable certificate) or PERMISSION_DENIED (wrong identity or
TLS version) and are logged with the peer address and every identity of the certificate.
``client_identity(context)`` gives servicers the identity that was let in.
"""

from __future__ import annotations

import contextvars
import logging
from collections import OrderedDict
from typing import Any

import grpc
from grpc import aio

from shared.tls import PeerCertificate, first_allowed
from signer.interceptors import AdmittingInterceptor
from signer.local_callers import LocalCallerInterceptor, LocalListener
from signer.tls_config import TlsConfig

log = logging.getLogger("ocsp-signer")

REQUIRED_TLS_VERSION = b"TLSv1.3"
_verified: contextvars.ContextVar[str | None] = contextvars.ContextVar("verified_client", default=None)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS with a required client certificate chaining to ``client_ca`` (verified by gRPC core)."""
    return grpc.ssl_server_credentials([(tls.key_pem, tls.cert_pem)], root_certificates=tls.client_ca_pem,
                                       require_client_auth=True)


class _PeerCache:
    """Parsed peer certificates by PEM: a connection makes many calls with the same certificate."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[bytes, PeerCertificate | None] = OrderedDict()

    def get(self, pem: bytes) -> PeerCertificate | None:
        if pem in self._items:
            self._items.move_to_end(pem)
            return self._items[pem]
        try:
            peer: PeerCertificate | None = PeerCertificate.from_pem(pem)
        except ValueError:
            peer = None
        self._items[pem] = peer
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return peer


_peers = _PeerCache()


def peer_certificate(context: Any) -> PeerCertificate | None:
    """The verified client certificate of the call, or None (plaintext, or no certificate)."""
    try:
        auth = context.auth_context()
    except Exception:  # noqa: BLE001 - a context without an auth context has no certificate
        return None
    pems = auth.get("x509_pem_cert") or []
    return _peers.get(pems[0]) if pems else None


def client_identity(context: Any) -> str:
    """Who is calling: the allow-listed identity the interceptor let in (``cn:ocsp-frontend``), else the
    certificate's first name, else ``plaintext:<peer>`` (a unix socket or plaintext loopback)."""
    verified = _verified.get()
    if verified is not None:
        return verified
    peer = peer_certificate(context)
    if peer is not None:
        return peer.name()
    return f"plaintext:{context.peer() or 'unknown'}"


class ClientAuthInterceptor(AdmittingInterceptor):
    def __init__(self, tls: TlsConfig) -> None:
        self.tls = tls
        self._seen: set[tuple[str, str]] = set()

    async def admit(self, context: Any, method: str) -> None:
        _verified.set(await self._check(context, method))

    async def _check(self, context: Any, method: str) -> str:
        """Returns the identity let in; aborts the call (raises) otherwise."""
        peer_addr = context.peer()
        try:
            auth = context.auth_context()
        except Exception:  # noqa: BLE001
            auth = {}
        pems = auth.get("x509_pem_cert") or []
        peer = _peers.get(pems[0]) if pems else None
        if peer is None:
            log.warning("refused %s from %s: no verified client certificate", method, peer_addr)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        assert peer is not None
        version = (auth.get("ssl_tls_version") or [b"?"])[0]
        if version != REQUIRED_TLS_VERSION:
            log.warning("refused %s from %s (%s): %s, TLS 1.3 is required", method, peer_addr,
                        peer.describe(), version.decode(errors="replace"))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "TLS 1.3 is required")
        allowed = self.tls.allowed_clients
        if allowed:
            ident = first_allowed(peer, allowed)
            if ident is None:
                log.warning("refused %s from %s: client identity %s is not in tls.allowed_clients (%s)",
                            method, peer_addr, peer.describe(), ", ".join(allowed))
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate not allowed")
            assert ident is not None
        else:
            ident = peer.name()
        key = (ident, peer_addr)
        if key not in self._seen and len(self._seen) < 10000:
            self._seen.add(key)
            log.info("client %s connected from %s over %s (%s)", ident, peer_addr,
                     version.decode(errors="replace"), peer.describe())
        return ident


# -- wiring for signer.service ------------------------------------------------------------------------


def local_listener(config: Any, worker: int | None = None, public: Any = None) -> LocalListener | None:
    """For a ``unix:`` address, the public socket and its relay (signer.local_callers); else None.
    ``worker``, ``public``: signer worker N and its supervisor's listening socket."""
    listen = config.listen
    if listen.kind != "unix":
        return None
    return LocalListener(listen.path, listen.socket_mode, listen.max_socket_connections, worker=worker,
                         public=public)


def transport_interceptors(config: Any, local: LocalListener | None = None) -> list[aio.ServerInterceptor]:
    out: list[aio.ServerInterceptor] = [ClientAuthInterceptor(config.tls)] if config.tls is not None else []
    if local is not None:
        out.append(LocalCallerInterceptor(local))
    return out


def add_port(server: aio.Server, config: Any, local: LocalListener | None = None) -> int:
    """Listen on ``[listen] address`` (with ``local``: on its private socket, behind the relay), mTLS
    with a ``[tls]`` table, else plaintext."""
    address = config.listen.address if local is None else local.upstream_address
    if config.tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(config.tls))


def transport_summary(config: Any) -> str:
    tls: TlsConfig | None = config.tls
    if tls is None:
        return "plaintext"
    who = ", ".join(tls.allowed_clients) if tls.allowed_clients else "any certificate it issued"
    return (f"mTLS, TLS 1.3, certificate {tls.subject} until {tls.not_after:%Y-%m-%d}, "
            f"client CA {tls.client_ca}, clients: {who}")
