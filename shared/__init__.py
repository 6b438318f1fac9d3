"""Code both halves import: the sans-IO OCSP core, config helpers, gRPC stubs."""
