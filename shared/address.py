"""Which addresses are local to the host: the only ones plaintext gRPC between frontend and signer may
use (the signer's listener without [tls], the frontend's channel without tls keys)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """``localhost``, or a loopback IP address (127.0.0.0/8, ::1; IPv6 with or without brackets)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_address(address: str) -> bool:
    """A ``unix:`` socket, or ``host:port`` whose host is a loopback host (``is_loopback_host``)."""
    if address.startswith("unix:"):
        return True
    return is_loopback_host(address.rpartition(":")[0])
