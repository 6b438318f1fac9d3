"""signer.audit writer: layout, record encoding, resume, file rotation, one chain per writer, fail-closed
(read-only directory, disk full, checkpoint signing failure, crash recovery), group commit, and checkpoint
policy changes between runs. Checkpoints are signed by a software P-256 key here (a fake token);
test_audit_softhsm.py signs them in SoftHSM."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization

from shared.audit.checkpoint import open_checkpoint, parse_checkpoint, parse_note
from shared.clock import FakeClock
from signer.audit import (
    AuditLog,
    AuditRecord,
    AuditUnavailable,
    FileIO,
    SignedStatus,
    origin_for,
    verify,
)
from tests.unit.signer.audit.audit_helpers import (
    OTHER,
    SIGNER,
    START,
    SoftSigner,
    check,
    lines_of,
    only_failure,
    open_log,
    put_lines,
    rec,
    write_log,
)

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
    body, _sigs = parse_note(lines[-1]["note"])
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



# -- fail closed -------------------------------------------------------------------------------------

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
    entered = threading.Event()
    synced: list[int] = []

    def fsync(fd: int) -> None:
        entered.set()
        gate.wait(5)
        os.fsync(fd)
        synced.append(fd)

    async def go() -> None:
        log = await open_log(tmp_path, signer=None, file_io=FileIO(fsync=fsync))
        task = asyncio.ensure_future(log.append(rec(0)))
        # Wait until the commit is inside fsync (held there by the gate), not for a guessed time.
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        await asyncio.sleep(0)
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
        # The timer fires within its 0.2 s interval: wait for its checkpoint (bounded), not a guess.
        for _ in range(500):
            if log.latest_checkpoint is not None:
                break
            await asyncio.sleep(0.01)
        assert log.latest_checkpoint is not None and "\n1\n" in log.latest_checkpoint
        await log.close()

    asyncio.run(go())



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





def test_group_window_applies_only_to_a_busy_log(tmp_path: Path) -> None:
    """After a quiet spell the first append is written at once (an idle signer adds no delay); an
    append soon after a write waits the window, and what arrives meanwhile shares its write."""

    async def open_with(window: float, writer: str) -> AuditLog:
        return await AuditLog.open(tmp_path, writer_id=writer, signer=None, checkpoint_every=1000,
                                   checkpoint_interval=timedelta(hours=1), max_file_bytes=1 << 30,
                                   clock=FakeClock(START), group_window=window)

    async def go() -> None:
        idle = await open_with(30.0, "idle")
        await asyncio.wait_for(idle.append(rec(0)), 5)  # a 30 s window honoured here would time out
        await idle.close()

        busy = await open_with(0.3, "busy")
        await busy.append(rec(0))
        commits = busy.commits
        first = busy.append(rec(1))  # a write just ended: this one waits the window ...
        for _ in range(5):
            await asyncio.sleep(0)  # (without the window, rec(1) is being written by now)
        second = busy.append(rec(2))  # ... so this one shares its write
        await asyncio.gather(first, second)
        assert busy.commits - commits == 1
        await busy.close()

    asyncio.run(go())


def test_group_window_waits_only_for_records_on_their_way(tmp_path: Path) -> None:
    """Told how many records are coming (the signer's signatures in flight), a write waits for
    exactly those: at once when none, until the last one arrives otherwise, never past the window."""

    async def go() -> None:
        log = await AuditLog.open(tmp_path, writer_id="w1", signer=None, checkpoint_every=1000,
                                  checkpoint_interval=timedelta(hours=1), max_file_bytes=1 << 30,
                                  clock=FakeClock(START), group_window=30.0)
        coming = 1
        log.expected = lambda: coming
        await asyncio.wait_for(log.append(rec(0)), 5)  # nothing else on its way: written at once
        commits = log.commits
        coming = 2
        first = log.append(rec(1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done()  # waiting for the second signature's record ...
        second = log.append(rec(2))
        await asyncio.wait_for(asyncio.gather(first, second), 5)  # ... which ends the wait (not the 30 s)
        assert log.commits - commits == 1
        await log.close()

    asyncio.run(go())
