"""Sans-IO pieces of the signature audit log: RFC 6962 Merkle hashing (``merkle``) and signed
checkpoints (``checkpoint``). The writer and verifier that do file I/O live in ``signer.audit``."""
