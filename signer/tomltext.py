"""Values written into TOML text: the demo's configuration templates (ocspctl demo setup) and the key
label a rotation writes into a ca.d file (signer.rotation)."""

from __future__ import annotations

from pathlib import Path

_SHORT = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(value: str | Path) -> str:
    """``value`` as a TOML basic string: quoted, with backslash, quote and every control character
    escaped (TOML 1.0 allows none of them raw), so ``tomllib`` reads back exactly ``str(value)``."""
    out = []
    for ch in str(value):
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
