"""The keys of a ca.d/*.toml, the file both halves read: its top-level keys, the signer's
``[responder]`` table and the shared ``[status]`` table.

Both halves check a CA file against this whole list (``shared.config.Section.load``), each its
own tables and the other's: a typo in ``[responder]`` is reported by the frontend's --check too,
although the frontend never reads that table, and the frontend needs no signer code to know its keys.
"""

from __future__ import annotations

from shared.config import Keys
from shared.status.config import STATUS_KEYS

# [responder]: read by the signer only (signer.config).
RESPONDER_KEYS: Keys = dict.fromkeys(("cert", "key_label", "responder_id", "include_cert"))

CA_FILE_KEYS: Keys = {
    "name": None,
    "ca_cert": None,
    "responder": RESPONDER_KEYS,
    "status": STATUS_KEYS,
}
