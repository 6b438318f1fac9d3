"""Frontend: keyless asyncio HTTP OCSP server. Never imports signer or pkcs11."""
