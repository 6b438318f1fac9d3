"""``--version`` of every command: the installed package's version (its metadata, not a constant here)."""

from __future__ import annotations

from importlib import metadata

PACKAGE = "ocsp-responder"


def version_text(prog: str) -> str:
    """``"ocsp-frontend 0.1.0"``: ``prog`` and the installed ``ocsp-responder`` distribution's version."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown (not installed)"
    return f"{prog} {version}"
