"""Subjects in OpenSSL's ``/K=V/K=V`` form (``ocspctl csr --subject``), and the X.509 Name they make."""

from __future__ import annotations

from collections.abc import Iterable

from asn1crypto import x509 as asn1_x509

from signer.ctl.common import CtlError

SUBJECT_ATTRIBUTES = {
    "CN": "common_name",
    "O": "organization_name",
    "OU": "organizational_unit_name",
    "C": "country_name",
    "L": "locality_name",
    "ST": "state_or_province_name",
    "emailAddress": "email_address",
    "serialNumber": "serial_number",
    "DC": "domain_component",
}


def _split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split on ``sep`` unless backslash-escaped; backslashes escape the next character."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_subject(text: str) -> list[tuple[str, str]]:
    """'/CN=x/O=y' -> [('common_name', 'x'), ('organization_name', 'y')], in the order given."""
    if not text.startswith("/"):
        raise CtlError(f"subject {text!r} must be in OpenSSL form, like /CN=ocsp.example.com/O=Example")
    result = []
    for part in _split_unescaped(text[1:], "/"):
        if not part:
            raise CtlError(f"subject {text!r} has an empty component")
        kv = _split_unescaped(part, "=", maxsplit=1)
        if len(kv) != 2:
            raise CtlError(f"subject component {part!r} is not KEY=VALUE")
        key, value = _unescape(kv[0]).strip(), _unescape(kv[1])
        if key not in SUBJECT_ATTRIBUTES:
            raise CtlError(f"subject attribute {key!r} is not supported; use one of "
                           f"{', '.join(SUBJECT_ATTRIBUTES)}")
        if not value:
            raise CtlError(f"subject attribute {key} has an empty value")
        if key == "C" and (len(value) != 2 or not value.isascii() or not value.isalpha()):
            raise CtlError(f"C must be a two-letter country code, not {value!r}")
        result.append((SUBJECT_ATTRIBUTES[key], value))
    return result


def build_name(attributes: Iterable[tuple[str, str]]) -> asn1_x509.Name:
    """An X.509 Name with one RDN per attribute, in order (asn1crypto picks each value's string type)."""
    rdns = [asn1_x509.Name.build({attr: value}).chosen[0] for attr, value in attributes]
    return asn1_x509.Name(name="", value=asn1_x509.RDNSequence(rdns))
