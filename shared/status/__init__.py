"""Per-CA status data (index.txt, CRL), for both halves: the frontend answers from it, the signer checks
what it signs against its own copy. The one part of ``shared/`` that does IO (it reads and watches the
status files, parses off the event loop): both halves must load, verify and reload the same files by
the same rules, so there is one implementation (HACKING.md, Rules)."""
