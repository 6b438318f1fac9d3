"""signer.audit: the writer (group commit, rotation, resume, fail-closed) and the verifier (every
kind of tampering reported at the right line). Checkpoints are signed by a software P-256 key here
(a fake token); test_audit_softhsm.py signs them in SoftHSM."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.audit.checkpoint import open_checkpoint, parse_checkpoint, parse_note
from shared.audit.merkle import leaf_hash
from shared.clock import FakeClock
from signer.audit import (AuditLog, AuditRecord, AuditUnavailable, FileIO, Report, SignedStatus, origin_for,
                          show, verify)
from signer.audit_cli import audit_main
from signer.mechanisms import SignatureAlgorithm

START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


class SoftSigner:
    """CheckpointSigner over a software key: stands in for the token in unit tests."""

    algorithm = SignatureAlgorithm.ECDSA_SHA256

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_spki = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fail = False
        self.calls = 0

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        if self.fail:
            raise RuntimeError("token removed")
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


SIGNER = SoftSigner()
OTHER = SoftSigner()


def rec(i: int, t: datetime = START, *, client: str = "frontend-a", issuer: str = "demo-ca",
        serial: str | None = None) -> AuditRecord:
    return AuditRecord(
        time=t, client=client, request_id=f"req-{i}", issuer_name=issuer,
        issuer_id=hashlib.sha256(issuer.encode()).hexdigest(),
        statuses=(SignedStatus(serial or f"{i + 0x1000:x}", "revoked" if i % 7 == 3 else "good"),),
        nonce=i % 2 == 0, responder_fingerprint=hashlib.sha256(b"responder").hexdigest(),
        key_label="demo-responder", generation=1, response_sha256=hashlib.sha256(b"%d" % i).hexdigest())


async def open_log(directory: Path, clock: FakeClock | None = None, *, writer: str = "w1",
                   signer: SoftSigner | None = SIGNER, every: int = 5,
                   interval: timedelta = timedelta(hours=1), max_bytes: int = 1 << 30,
                   file_io: FileIO | None = None) -> AuditLog:
    return await AuditLog.open(directory, writer_id=writer, signer=signer, checkpoint_every=every,
                               checkpoint_interval=interval, max_file_bytes=max_bytes,
                               clock=clock or FakeClock(START), file_io=file_io)


def write_log(directory: Path, n: int = 12, **kw: object) -> Path:
    """n records, appended one by one, then close(). With every=5 and n=12 the single file reads:
    line 1 header, 2-6 records #0-#4, 7 checkpoint(5), 8-12 #5-#9, 13 checkpoint(10),
    14-15 #10-#11, 16 final checkpoint(12)."""

    async def go() -> None:
        log = await open_log(directory, **kw)  # type: ignore[arg-type]
        for i in range(n):
            await log.append(rec(i))
        await log.close()

    asyncio.run(go())
    (path,) = sorted(directory.glob("audit-*.jsonl"))
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def put_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def rechain(lines: list[str], start: int = 0) -> list[str]:
    """What an attacker without the audit key can do: recompute every index and prev link."""
    out, head, index = [], b"\0" * 32, 0
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] == "sig":
            if i >= start:
                obj["index"], obj["prev"] = index, base64.b64encode(head).decode()
                line = json.dumps(obj, separators=(",", ":")) + "\n"
            head = leaf_hash(line.rstrip("\n").encode())
            index += 1
        out.append(line)
    return out


def only_failure(report: Report) -> tuple[int, str]:
    assert not report.ok
    f = report.first_failure
    assert f is not None
    return f.line, f.message


# -- the happy path --------------------------------------------------------------------------------

def test_layout_records_and_checkpoints(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    assert path.name == "audit-w1-00000001-20260601.jsonl"
    lines = [json.loads(x) for x in lines_of(path)]
    assert [x["type"] for x in lines] == (["file"] + ["sig"] * 5 + ["checkpoint"] + ["sig"] * 5
                                          + ["checkpoint"] + ["sig"] * 2 + ["checkpoint"])
    first = lines[1]
    assert first["prev"] == base64.b64encode(bytes(32)).decode() and first["index"] == 0
    assert first["statuses"] == [["1000", "good"]] and first["nonce"] is True
    body, sigs = parse_note(lines[-1]["note"])
    c = parse_checkpoint(body)
    assert c.origin == origin_for("w1") == "ocsp-audit/v1/w1" and c.size == 12
    assert any(e.startswith("policy every=5 interval=3600") for e in c.extensions)
    assert open_checkpoint(lines[-1]["note"], SIGNER.public_key_spki, "ocsp-audit/v1/w1") == c
    report = verify([path], SIGNER.public_key_spki)
    assert report.ok and not report.warnings
    assert report.writers[0].records == 12 and report.writers[0].checkpoints == 3


def test_record_encoding_round_trips() -> None:
    from signer.audit import decode_record, encode_record

    odd = AuditRecord(time=datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
                      client='CN="fe",O=Ex\\ample \u00e9\u2603\n', request_id="\x00\x1f\"", issuer_name="ca/\u0416",
                      issuer_id="id", statuses=(SignedStatus("00ff", "revoked"), SignedStatus("1", "unknown")),
                      nonce=False, responder_fingerprint="0" * 64, key_label="k\t", generation=7,
                      response_sha256="f" * 64)
    line = encode_record(odd, "w.1", 42, b"\x07" * 32)
    obj = json.loads(line)
    assert line == json.dumps(obj, separators=(",", ":")).encode()  # what json.dumps would write
    writer, index, prev, back = decode_record(obj)
    assert (writer, index, prev) == ("w.1", 42, b"\x07" * 32) and back == odd
    with pytest.raises(ValueError):
        AuditRecord(**{**{f: getattr(odd, f) for f in odd.__dataclass_fields__}, "response_sha256": "F" * 64})
    with pytest.raises(ValueError):
        AuditRecord(**{**{f: getattr(odd, f) for f in odd.__dataclass_fields__},
                       "statuses": (SignedStatus("0x1", "good"),)})


def test_verify_accepts_pem_key_and_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    path = write_log(tmp_path)
    pem = SIGNER.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    assert verify([path], pem).ok
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(SIGNER.key.public_key()).serial_number(1)
            .not_valid_before(START).not_valid_after(START + timedelta(days=1))
            .sign(SIGNER.key, hashes.SHA256()))
    assert verify([path], cert.public_bytes(serialization.Encoding.DER)).ok
    report = verify([path], OTHER.public_key_spki)
    line, message = only_failure(report)
    assert line == 7 and "another key" in message


def test_resume_continues_the_chain(tmp_path: Path) -> None:
    write_log(tmp_path, n=7)
    path = write_log(tmp_path, n=4)  # a second run appends #7..#10 to the same file
    report = verify([path], SIGNER.public_key_spki)
    assert report.ok and report.writers[0].records == 11


def test_rotation_by_size_and_day_keeps_one_chain(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock, max_bytes=4096, every=4)
        for i in range(30):
            await log.append(rec(i, clock.now()))
            clock.advance(timedelta(minutes=30))  # crosses midnight
        await log.close()

    asyncio.run(go())
    files = sorted(tmp_path.glob("audit-w1-*.jsonl"))
    assert len(files) >= 4
    assert {f.name.rsplit("-", 1)[1] for f in files} == {"20260601.jsonl", "20260602.jsonl"}
    assert all(f.stat().st_size <= 4096 + 1500 for f in files)  # a checkpoint may pass the limit
    assert verify(files, SIGNER.public_key_spki).ok
    # any suffix of the files verifies too, with a warning that it is a suffix
    report = verify(files[2:], SIGNER.public_key_spki)
    assert report.ok and "earlier files were not given" in report.warnings[0].message
    # a file deleted from the middle is not
    line, message = only_failure(verify(files[:1] + files[2:], SIGNER.public_key_spki))
    assert line == 1 and "missing" in message


def test_writers_are_verified_independently(tmp_path: Path) -> None:
    async def go() -> None:
        a = await open_log(tmp_path, writer="host1.w0")
        b = await open_log(tmp_path, writer="host1.w1")
        await asyncio.gather(*(log.append(rec(i)) for i in range(9) for log in (a, b)))
        await a.close()
        await b.close()

    asyncio.run(go())
    fa, fb = sorted(tmp_path.glob("audit-*.jsonl"))
    assert verify([fa, fb], SIGNER.public_key_spki).ok
    lines = lines_of(fb)
    pristine = list(lines)
    lines[3] = lines[3].replace("frontend-a", "frontend-x")
    put_lines(fb, lines)
    report = verify([fa, fb], SIGNER.public_key_spki)
    assert not report.ok and len(report.failures) == 1
    assert report.failures[0].writer == "host1.w1" and report.failures[0].line == 4
    # a checkpoint copied from one writer's stream into another's does not pass
    la, lb = lines_of(fa), pristine
    cp_a = next(x for x in la if '"checkpoint"' in x)
    put_lines(fb, lb[:6] + [cp_a.replace('"host1.w0"', '"host1.w1"')] + lb[7:])
    line, message = only_failure(verify([fa, fb], SIGNER.public_key_spki))
    assert line == 7 and "ocsp-audit/v1/host1.w1" in message


# -- tampering -------------------------------------------------------------------------------------

@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return write_log(tmp_path)


def check(path: Path, **kw: object) -> Report:
    return verify([path], SIGNER.public_key_spki, **kw)  # type: ignore[arg-type]


def test_modified_field(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[4] = lines[4].replace('"frontend-a"', '"frontend-b"')  # record #3
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 5 and "record #3 was altered" in message
    assert check(log_file).first_failure.index == 3  # type: ignore[union-attr]


def test_modified_prev_field(log_file: Path) -> None:
    lines = lines_of(log_file)
    obj = json.loads(lines[4])
    obj["prev"] = base64.b64encode(b"x" * 32).decode()
    lines[4] = json.dumps(obj, separators=(",", ":")) + "\n"
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 5 and "record #3 was altered" in message


def test_modified_last_record_before_checkpoint(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[5] = lines[5].replace('"good"', '"unknown"')  # record #4, followed by checkpoint(5)
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 6 and "record #4 was altered" in message


def test_deleted_record(log_file: Path) -> None:
    lines = lines_of(log_file)
    del lines[4]  # record #3
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 5 and "expected record #3 here, found #4" in message and "deleted" in message


def test_inserted_record(log_file: Path) -> None:
    lines = lines_of(log_file)
    forged = json.loads(lines[4])  # a forged #3 that chains correctly to #2, inserted before the real #3
    forged["client"] = "intruder"
    lines.insert(4, json.dumps(forged, separators=(",", ":")) + "\n")
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 5 and "record #3 appears twice" in message and "inserted" in message


def test_swapped_records(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[4], lines[5] = lines[5], lines[4]  # #3 and #4
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 5 and "found #4" in message and "reordered" in message


def test_truncated_mid_record(log_file: Path) -> None:
    data = log_file.read_bytes()
    lines = lines_of(log_file)
    cut = sum(len(x.encode()) for x in lines[:10]) + 40  # inside record #8, line 11
    log_file.write_bytes(data[:cut])
    # A prefix of a log is what a crash leaves: without an outside anchor it is only a warning ...
    report = check(log_file)
    assert report.ok
    assert {w.line for w in report.warnings} == {11, 8}  # torn line 11; #5..#7 unanchored from line 8
    # ... a checkpoint kept elsewhere makes it a failure ...
    write_dir = log_file.parent / "orig"
    write_dir.mkdir()
    original = write_dir / log_file.name
    original.write_text("".join(lines))
    final_note = json.loads(lines[-1])["note"]
    line, message = only_failure(check(log_file, trusted_checkpoints=[final_note]))
    assert "truncated" in message and "12 records" in message
    assert check(original, trusted_checkpoints=[final_note]).ok
    # ... and so does saying the writer was closed cleanly.
    line, message = only_failure(check(log_file, require_complete=True))
    assert line == 8 and "not covered by a checkpoint" in message


def test_dropped_checkpoint_with_records_after_it(log_file: Path) -> None:
    lines = lines_of(log_file)
    del lines[12]  # checkpoint(10): records #5..#11 now run to checkpoint(12)
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 13 and "missing checkpoint: record #10" in message


def test_dropped_final_checkpoint(log_file: Path) -> None:
    lines = lines_of(log_file)
    put_lines(log_file, lines[:-1])
    report = check(log_file)
    assert report.ok and report.warnings[0].line == 14 and "unanchored" in report.warnings[0].message
    line, _ = only_failure(check(log_file, require_complete=True))
    assert line == 14


def test_checkpoint_moved(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines.insert(7, lines.pop(6))  # checkpoint(5) one line later, after record #5
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 8 and "signed for 5 records, but 6 records precede it" in message


def test_checkpoint_altered(log_file: Path) -> None:
    lines = lines_of(log_file)
    obj = json.loads(lines[12])
    body, _ = parse_note(obj["note"])
    obj["note"] = obj["note"].replace("\n10\n", "\n11\n")
    lines[12] = json.dumps(obj, separators=(",", ":")) + "\n"
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 13 and "does not verify" in message


def test_edit_and_recompute_chain(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[9] = lines[9].replace('"good"', '"revoked"')  # record #7
    put_lines(log_file, rechain(lines))
    f = check(log_file).first_failure
    assert f is not None and f.line == 8 and (f.first, f.last) == (5, 9)
    assert "#5..#9 do not match the checkpoint" in f.message and "recomputed" in f.message


def test_recompute_chain_and_drop_every_checkpoint(log_file: Path) -> None:
    lines = [x for x in lines_of(log_file) if '"type":"checkpoint"' not in x]
    lines[3] = lines[3].replace('"good"', '"revoked"')
    put_lines(log_file, rechain(lines))
    line, message = only_failure(check(log_file))
    assert line == 2 and "no valid checkpoint" in message


def test_recompute_chain_and_forge_checkpoints(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    original = lines_of(path)
    # the attacker re-signs a rewritten log with a key of their own
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forged = write_log(forged_dir, signer=OTHER)
    line, message = only_failure(check(forged))
    assert line == 7 and "another key" in message
    assert original != lines_of(forged)


def test_time_rule_catches_a_removed_checkpoint(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock, every=1000, interval=timedelta(minutes=1))
        for i in range(7):
            await log.append(rec(i, clock.now()))
            clock.advance(timedelta(seconds=25))
        await log.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    lines = lines_of(path)
    kinds = [json.loads(x)["type"] for x in lines]
    # #0 00:00, #1 00:25, #2 00:50, checkpoint, #3 01:15 ...
    assert kinds[:6] == ["file", "sig", "sig", "sig", "checkpoint", "sig"]
    assert check(path).ok
    del lines[4]
    put_lines(path, lines)
    line, message = only_failure(check(path))
    assert line == 5 and "missing checkpoint: record #3 is 0:01:15 after record #0" in message


def test_garbage_and_duplicate_keys(log_file: Path) -> None:
    lines = lines_of(log_file)
    lines[2] = lines[2].replace('{"type":"sig",', '{"type":"sig","client":"x",')
    put_lines(log_file, lines)
    line, message = only_failure(check(log_file))
    assert line == 3 and "duplicate key" in message


# -- fail closed -------------------------------------------------------------------------------------

def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture
def make_unwritable() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """chmod for ordinary users; root ignores modes, so root gets the immutable attribute."""
    undo: list[Callable[[], None]] = []

    def lock(path: Path) -> Callable[[], None]:
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)

            def restore() -> None:
                path.chmod(mode)
        else:
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: cannot make a path unwritable")
            try:
                _chattr("+i", path)
            except subprocess.CalledProcessError:
                pytest.skip("running as root and chattr +i is not permitted here")

            def restore() -> None:
                _chattr("-i", path)
        undo.append(restore)
        return restore

    yield lock
    for restore in undo:
        try:
            restore()
        except Exception:
            pass


def test_read_only_directory(tmp_path: Path, make_unwritable: Callable[[Path], Callable[[], None]]) -> None:
    async def go() -> None:
        unlock = make_unwritable(tmp_path)
        log = await open_log(tmp_path)
        for i in range(3):  # keeps failing, never returns success
            with pytest.raises(AuditUnavailable, match="cannot write the audit log"):
                await log.append(rec(i))
        assert log.failure is not None and log.size == 0
        unlock()
        await log.append(rec(0))  # re-probed on the next append
        assert log.failure is None
        await log.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert check(path).ok and check(path).writers[0].records == 1


def test_unwritable_file(tmp_path: Path, make_unwritable: Callable[[Path], Callable[[], None]]) -> None:
    path = write_log(tmp_path, n=3)

    async def go() -> None:
        unlock = make_unwritable(path)
        log = await open_log(tmp_path)
        with pytest.raises(AuditUnavailable) as e:
            await log.append(rec(3))
        assert str(path) in e.value.reason
        with pytest.raises(AuditUnavailable):
            await log.append(rec(3))
        unlock()
        await log.append(rec(3))
        await log.close()

    asyncio.run(go())
    report = check(path)
    assert report.ok and report.writers[0].records == 4


class FaultyIO:
    """FileIO hooks: counts fsyncs, and fails writes with ENOSPC half-way while ``full``."""

    def __init__(self, fsync_delay: float = 0.0) -> None:
        self.full = False
        self.fsync_error: int | None = None
        self.fsyncs = 0
        self.fsync_delay = fsync_delay

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.full:
            half = len(data) // 2
            if half:
                os.write(fd, data[:half])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fsync_delay:
            time.sleep(self.fsync_delay)
        if self.fsync_error is not None:
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        os.fsync(fd)

    def io(self) -> FileIO:
        return FileIO(write=self.write, fsync=self.fsync)


def test_disk_full_fails_closed_and_rolls_back(tmp_path: Path) -> None:
    faults = FaultyIO()

    async def go() -> None:
        log = await open_log(tmp_path, file_io=faults.io())
        for i in range(3):
            await log.append(rec(i))
        (path,) = tmp_path.glob("audit-*.jsonl")
        before = path.read_bytes()
        faults.full = True
        results = await asyncio.gather(*(log.append(rec(i)) for i in range(3, 9)), return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) and "ENOSPC" in r.reason for r in results)
        assert path.read_bytes() == before  # the half-written group was rolled back
        with pytest.raises(AuditUnavailable):
            await log.append(rec(3))
        faults.full = False
        await log.append(rec(3))
        faults.fsync_error = errno.EIO
        with pytest.raises(AuditUnavailable, match="EIO"):
            await log.append(rec(4))
        faults.fsync_error = None
        for i in range(4, 8):
            await log.append(rec(i))
        await log.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    report = check(path, require_complete=True)
    assert report.ok and report.writers[0].records == 8


def test_checkpoint_signing_failure_fails_closed(tmp_path: Path) -> None:
    signer = SoftSigner()

    async def go() -> None:
        log = await open_log(tmp_path, signer=signer, every=2)
        await log.append(rec(0))
        signer.fail = True
        with pytest.raises(AuditUnavailable, match="cannot sign an audit checkpoint"):
            await log.append(rec(1))  # completes a checkpoint that cannot be signed
        signer.fail = False
        await log.append(rec(1))
        await log.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert verify([path], signer.public_key_spki).ok


def test_crash_recovery(tmp_path: Path) -> None:
    async def crash() -> None:  # appends, then "dies" without close(): no final checkpoint
        log = await open_log(tmp_path)
        for i in range(7):
            await log.append(rec(i))
        _abandon(log)

    asyncio.run(crash())
    (path,) = tmp_path.glob("audit-*.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"type":"sig","writer":"w1","ind')  # torn by the crash, never acknowledged
    report = check(path)
    assert report.ok and len(report.warnings) == 2  # torn line, unanchored #5 and #6

    async def restart() -> None:
        log = await open_log(tmp_path)  # repairs the tail, checkpoints #5..#6
        assert log.size == 7
        await log.append(rec(7))
        await log.close()

    asyncio.run(restart())
    report = check(path, require_complete=True)
    assert report.ok and report.writers[0].records == 8


def test_refuses_to_extend_a_damaged_log(log_file: Path) -> None:
    lines = lines_of(log_file)
    del lines[4]
    put_lines(log_file, lines)
    with pytest.raises(AuditUnavailable, match="refusing to extend"):
        asyncio.run(open_log(log_file.parent))


# -- group commit ------------------------------------------------------------------------------------

def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    faults = FaultyIO(fsync_delay=0.005)

    async def go() -> None:
        log = await open_log(tmp_path, file_io=faults.io(), every=50)
        await asyncio.gather(*(log.append(rec(i)) for i in range(200)))
        assert log.size == 200
        await log.close()

    asyncio.run(go())
    assert faults.fsyncs <= 20, faults.fsyncs  # 200 appends
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert check(path, require_complete=True).ok


def test_append_returns_only_after_fsync(tmp_path: Path) -> None:
    gate = threading.Event()
    synced: list[int] = []

    def fsync(fd: int) -> None:
        gate.wait(5)
        os.fsync(fd)
        synced.append(fd)

    async def go() -> None:
        log = await open_log(tmp_path, signer=None, file_io=FileIO(fsync=fsync))
        task = asyncio.ensure_future(log.append(rec(0)))
        await asyncio.sleep(0.1)
        assert not task.done() and not synced
        gate.set()
        await task
        assert synced
        await log.close()

    asyncio.run(go())


def test_idle_log_is_checkpointed_by_the_timer(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock, every=1000, interval=timedelta(seconds=0.2))
        await log.append(rec(0, clock.now()))
        clock.advance(timedelta(seconds=1))
        await asyncio.sleep(0.3)
        assert log.latest_checkpoint is not None and "\n1\n" in log.latest_checkpoint
        await log.close()

    asyncio.run(go())


# -- show and the CLI --------------------------------------------------------------------------------

def test_show_filters(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock)
        for i in range(10):
            await log.append(rec(i, clock.now(), client=f"fe-{i % 2}", issuer="ca-a" if i < 5 else "ca-b",
                                 serial="00ab" if i == 4 else None))
            clock.advance(timedelta(minutes=1))
        await log.close()

    asyncio.run(go())
    files = list(tmp_path.glob("audit-*.jsonl"))
    assert [r.index for r in show(files, serial="AB")] == [4]
    assert [r.index for r in show(files, serial="0x00:ab")] == [4]
    assert [r.index for r in show(files, issuer="ca-b", client="fe-1")] == [5, 7, 9]
    assert [r.index for r in show(files, issuer=hashlib.sha256(b"ca-a").hexdigest())] == [0, 1, 2, 3, 4]
    got = show(files, since=START + timedelta(minutes=2), until=START + timedelta(minutes=4))
    assert [r.index for r in got] == [2, 3, 4]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(tmp_path)
    key = tmp_path / "audit.pub"
    key.write_bytes(SIGNER.public_key_spki)
    assert audit_main(["verify", str(path), "--pubkey", str(key)]) == 0
    assert "OK" in capsys.readouterr().out
    assert audit_main(["show", str(path), "--serial", "1003"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["request_id"] == "req-3"
    assert audit_main(["show", str(path), "--since", "2026-06-01T12:00:00Z", "--client", "nobody"]) == 0
    assert capsys.readouterr().out == ""

    lines = lines_of(path)
    del lines[4]
    put_lines(path, lines)
    assert audit_main(["verify", str(path), "--pubkey", str(key)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:5:" in out and "FAIL" in out

    assert audit_main(["verify", str(path)]) == 2  # no key
    assert audit_main(["verify", str(path), "--pubkey", str(key), "--cert", str(key)]) == 2
    assert audit_main(["verify", str(tmp_path / "missing.jsonl"), "--pubkey", str(key)]) == 2
    assert audit_main(["show", str(path), "--since", "yesterday"]) == 2
    assert audit_main(["frobnicate"]) == 2
    assert audit_main([]) == 2


# -- the checkpoint policy changes between runs --------------------------------------------------------

def _abandon(log: AuditLog) -> None:
    """What a crash leaves: no final checkpoint, the files as they are (and the writer lock gone)."""
    if log._ticker is not None:
        log._ticker.cancel()
    log._io_executor.shutdown(wait=True)
    log._close_fd()
    release = getattr(log, "_release_lock", None)
    if release is not None:
        release()


@pytest.mark.parametrize("crash", [False, True])
@pytest.mark.parametrize("first,second", [(5, 100), (100, 10)])
def test_policy_change_between_runs_verifies(tmp_path: Path, crash: bool, first: int, second: int) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock, every=first)
        await log.checkpoint()
        for i in range(23):
            await log.append(rec(i))
        if crash:
            _abandon(log)
        else:
            await log.close()
        log2 = await open_log(tmp_path, clock, every=second)  # the operator changed checkpoint_every
        await log2.checkpoint()  # what the signer's open_audit does
        for i in range(23, 60):
            await log2.append(rec(i))
        await log2.close()

    asyncio.run(go())
    report = verify(sorted(tmp_path.glob("audit-*.jsonl")), SIGNER.public_key_spki, require_complete=True)
    assert report.ok, [str(f) for f in report.failures]
    notes = [json.loads(x)["note"] for p in sorted(tmp_path.glob("audit-*.jsonl")) for x in lines_of(p)
             if '"checkpoint"' in x]
    policies = [next(e for e in parse_checkpoint(parse_note(n)[0]).extensions if e.startswith("policy"))
                for n in notes]
    switch = policies.index(f"policy every={second} interval=3600")
    assert all(p == f"policy every={first} interval=3600" for p in policies[:switch])
    assert all(p == f"policy every={second} interval=3600" for p in policies[switch:])


def test_policy_change_still_catches_a_removed_checkpoint(tmp_path: Path) -> None:
    async def go() -> None:
        log = await open_log(tmp_path, every=5)
        for i in range(7):
            await log.append(rec(i))
        await log.close()
        log2 = await open_log(tmp_path, every=3)
        for i in range(7, 14):
            await log2.append(rec(i))
        await log2.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert check(path, require_complete=True).ok
    lines = lines_of(path)
    kinds = [json.loads(x)["type"] for x in lines]
    # the first checkpoint of the new run's records (after #7..#9, every=3)
    at = [i for i, k in enumerate(kinds) if k == "checkpoint"][-3]
    assert [json.loads(x).get("index") for x in lines[at - 3:at]] == [7, 8, 9]
    del lines[at]
    put_lines(path, lines)
    line, message = only_failure(check(path))
    assert "missing checkpoint" in message and line == at + 1


def test_sub_second_interval_is_written_exactly(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock, every=100, interval=timedelta(milliseconds=1500))
        await log.checkpoint()
        for i in range(3):
            await log.append(rec(i, clock.now()))
            clock.advance(timedelta(seconds=1))
        await log.close()

    asyncio.run(go())
    (path,) = tmp_path.glob("audit-*.jsonl")
    assert "interval=1.5" in path.read_text()
    report = check(path, require_complete=True)
    assert report.ok, [str(f) for f in report.failures]


def test_one_process_per_writer_id(tmp_path: Path) -> None:
    async def go() -> None:
        log = await open_log(tmp_path)
        other = await open_log(tmp_path, writer="w2")  # another writer_id shares the directory
        with pytest.raises(AuditUnavailable, match="give each signer process its own audit.writer_id"):
            await open_log(tmp_path)  # a second writer on w1's chain
        await log.append(rec(0))
        await log.close()
        again = await open_log(tmp_path)  # released on close
        await again.append(rec(1))
        await again.close()
        await other.close()

    asyncio.run(go())
    assert (tmp_path / ".audit-w1.lock").exists()
    assert check(next(tmp_path.glob("audit-w1-*.jsonl")), require_complete=True).ok
