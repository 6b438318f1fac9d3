"""Signer: holds responder keys in a PKCS#11 token, builds and signs OCSP responses."""
