"""Coverage-guided fuzzing (atheris) of the request decoders, the GET path decoder and the frontend's
HTTP handling; see README "make fuzz". The checks live in ``fuzz.checks`` and ``fuzz.http_harness``
(plain Python, no atheris), so tests/fuzz/test_fuzz_vectors.py replays saved crash vectors with them."""
