"""Sans-IO OCSP core (RFC 6960, RFC 9654, RFC 9919): bytes and values in, values out."""
