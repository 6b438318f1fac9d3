"""Tamper-evident audit log of every signature the signer makes.

- ``format``: the file format (documented at its top) and the pure line codec;
- ``writer``: ``AuditLog``, the writer (group commit, file rotation, resume, fail-closed);
- ``verify``: ``verify`` and ``show``, which read the files back.

Callers import from ``signer.audit``; the names below are its interface.
"""

from signer.audit.format import (
    FILE_RE,
    AuditRecord,
    RefusalRecord,
    SignedStatus,
    decode_record,
    encode_record,
    origin_for,
)
from signer.audit.verify import Report, open_kept_checkpoint, show, verify
from signer.audit.writer import AuditLog, AuditUnavailable, FileIO, Pkcs11CheckpointSigner, WriterBusy

__all__ = [
    "FILE_RE", "AuditLog", "AuditRecord", "AuditUnavailable", "FileIO", "Pkcs11CheckpointSigner", "RefusalRecord", "Report",
    "SignedStatus", "WriterBusy", "decode_record", "encode_record", "open_kept_checkpoint", "origin_for", "show", "verify",
]
