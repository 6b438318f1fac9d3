"""signer.audit verifier and search: every kind of tampering reported at the right line, where a log may
begin (lost or pruned oldest files, kept checkpoints), `show` and the `ocspctl audit` CLI, output into
a closed pipe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from shared.audit.checkpoint import parse_note, sign_note
from shared.clock import FakeClock
from signer.audit import (
    origin_for,
    show,
    verify,
)
from signer.ctl.audit import audit_main
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
    rechain,
    write_log,
)

# -- tampering -------------------------------------------------------------------------------------


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
    _body, _ = parse_note(obj["note"])
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



# -- where the log begins: lost oldest files, and a log pruned for retention -------------------------

def write_files(directory: Path, n: int = 40, clock: FakeClock | None = None) -> list[Path]:
    """A chain over several files, begun with a genesis checkpoint as the signer begins its log. With
    4096-byte files and a checkpoint every 4 records, n=40 gives (header index, then contents):
    file #1 [0: genesis cp(0), #0..#5 with cp(4)], #2 [6: #6..#11, cp(8), cp(12)],
    #3 [12: #12..#17, cp(16)], #4 [18: ..., cp(20), cp(24)], #5 [24: ...], #6 [30: ...], #7 [36: ...]."""

    async def go() -> None:
        log = await open_log(directory, clock, every=4, max_bytes=4096)
        await log.checkpoint()
        for i in range(n):
            await log.append(rec(i))
        await log.close()

    asyncio.run(go())
    return sorted(directory.glob("audit-w1-*.jsonl"))


def header_index(path: Path) -> int:
    return json.loads(lines_of(path)[0])["index"]


def notes_in(path: Path) -> list[tuple[int, str]]:
    """(size, note) of every checkpoint line in ``path``."""
    objs = map(json.loads, lines_of(path))
    return [(obj["index"], obj["note"]) for obj in objs if obj["type"] == "checkpoint"]


def test_lost_oldest_file_fails_from_genesis(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    assert len(files) >= 5 and [header_index(f) for f in files[:3]] == [0, 6, 12]
    assert verify(files, SIGNER.public_key_spki, from_genesis=True, require_complete=True).ok
    pruned = files[1:]  # file #1 (the genesis checkpoint, records #0..#5) deleted
    # Without --from-genesis: it verifies, with a warning that says what precedes it and what to do.
    report = verify(pruned, SIGNER.public_key_spki)
    assert report.ok and len(report.warnings) == 1
    w = report.warnings[0]
    assert (w.path, w.line) == (str(files[1]), 1)
    assert "verification starts at file #2, record #6" in w.message
    assert "the 6 records before it (#0..#5) are not checked" in w.message
    assert "--from-checkpoint" in w.message
    # --from-genesis, and --complete (which implies it), make it a failure that names the missing range.
    for kw in ({"from_genesis": True}, {"require_complete": True}):
        report = verify(pruned, SIGNER.public_key_spki, **kw)  # type: ignore[arg-type]
        line, message = only_failure(report)
        assert report.first_failure.path == str(files[1]) and line == 1  # type: ignore[union-attr]
        assert "the log does not begin at genesis" in message
        assert "records #0..#5 (file #1) are missing" in message
        assert (report.first_failure.first, report.first_failure.last) == (0, 5)  # type: ignore[union-attr]
    _, message = only_failure(verify(files[2:], SIGNER.public_key_spki, from_genesis=True))
    assert "records #0..#11 (files #1..#2) are missing" in message


def test_lost_first_file_with_only_the_genesis_checkpoint(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock(START)
        log = await open_log(tmp_path, clock)
        await log.checkpoint()  # genesis, in file #1
        clock.advance(timedelta(days=1))
        for i in range(3):
            await log.append(rec(i, clock.now()))  # a new day: file #2, beginning at record #0
        await log.close()

    asyncio.run(go())
    files = sorted(tmp_path.glob("audit-w1-*.jsonl"))
    assert len(files) == 2 and header_index(files[1]) == 0
    assert verify(files, SIGNER.public_key_spki, require_complete=True).ok
    report = verify(files[1:], SIGNER.public_key_spki)
    assert report.ok and "earlier files were not given (file #1" in report.warnings[0].message
    _, message = only_failure(verify(files[1:], SIGNER.public_key_spki, from_genesis=True))
    assert "does not begin at genesis" in message and "file #1 is missing" in message


def test_pruned_log_verifies_from_the_checkpoint_kept(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    pruned = files[2:]  # files #1 and #2 retired: records #0..#11
    size, kept = notes_in(files[2])[0]  # the first checkpoint of the oldest file kept
    assert size == 16
    report = verify(pruned, SIGNER.public_key_spki, start_checkpoints=[kept], require_complete=True)
    assert report.ok and not report.warnings, [str(f) for f in report.failures + report.warnings]
    assert len(report.notes) == 1 and "records #0..#11 precede file #3: retired" in report.notes[0].message
    assert report.writers[0].first_index == 12 and report.writers[0].anchored == 40
    # A checkpoint at the very boundary: file #2 ends with checkpoint(12), file #3 begins at record #12.
    size, boundary = notes_in(files[1])[-1]
    assert size == 12 == header_index(files[2])
    assert verify(pruned, SIGNER.public_key_spki, start_checkpoints=[boundary], require_complete=True).ok
    # There the header's unsigned state is checked against it at once.
    lines = lines_of(files[2])
    header = json.loads(lines[0])
    header["range"][0] = base64.b64encode(bytes(32)).decode()
    put_lines(files[2], [json.dumps(header, separators=(",", ":")) + "\n"] + lines[1:])
    line, message = only_failure(verify(pruned, SIGNER.public_key_spki, start_checkpoints=[boundary]))
    assert line == 1 and "does not match the trusted checkpoint of 12 records" in message
    line, message = only_failure(verify(pruned, SIGNER.public_key_spki, trusted_checkpoints=[boundary]))
    assert line == 1 and "does not match the trusted checkpoint of 12 records" in message


def test_pruned_log_that_lost_more_fails(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    size, kept = notes_in(files[2])[0]  # kept when files #1 and #2 were retired
    assert size == 16 and header_index(files[3]) == 18
    # The oldest file kept (records #12..#17) lost afterwards: the files begin after the kept checkpoint.
    report = verify(files[3:], SIGNER.public_key_spki, start_checkpoints=[kept])
    line, message = only_failure(report)
    assert report.first_failure.path == str(files[3]) and line == 1  # type: ignore[union-attr]
    assert ("the files given begin at record #18 (file #4), after the kept checkpoint of 16 records: "
            "records #16..#17 were deleted") in message
    # A record lost from a later file.
    lines = lines_of(files[4])
    assert json.loads(lines[2])["index"] == 25
    del lines[2]
    put_lines(files[4], lines)
    line, message = only_failure(verify(files[2:], SIGNER.public_key_spki, start_checkpoints=[kept]))
    assert line == 3 and "records #25..#25 were deleted" in message
    # One start checkpoint per writer.
    with pytest.raises(ValueError, match="one per writer"):
        verify(files[2:], SIGNER.public_key_spki, start_checkpoints=[kept, notes_in(files[1])[-1][1]])


def test_trusted_checkpoint_before_the_files_is_not_ignored(tmp_path: Path) -> None:
    files = write_files(tmp_path)
    size, early = notes_in(files[0])[-1]  # checkpoint(4), in file #1
    assert size == 4
    assert verify(files, SIGNER.public_key_spki, trusted_checkpoints=[early]).ok
    line, message = only_failure(verify(files[1:], SIGNER.public_key_spki, trusted_checkpoints=[early]))
    assert line == 1
    assert "a trusted checkpoint covers 4 records, but the files given begin at record #6" in message
    assert "records #4..#5 are missing" in message


def _pem_of(signer: SoftSigner, path: Path) -> Path:
    path.write_bytes(signer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_wrong_key_is_not_reported_as_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_files(tmp_path)
    report = verify(files, OTHER.public_key_spki)
    assert not report.ok and len(report.failures) == 1
    f = report.failures[0]
    assert f.wrong_key and (f.path, f.line) == (str(files[0]), 2) and "signed by another key" in f.message
    other = _pem_of(OTHER, tmp_path / "other.pem")
    assert audit_main(["verify", *map(str, files), "--pubkey", str(other)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL no checkpoint verifies with the public key in {other}: wrong --pubkey?" in out
    assert "TAMPERING DETECTED" not in out and "#-1" not in out
    assert out.splitlines()[-1] == f"NOT VERIFIED: no checkpoint verifies with the public key in {other}"
    # Some checkpoints signed by the audit key, one by another: that is tampering, reported as such.
    lines = lines_of(files[1])
    n = next(i for i, x in enumerate(lines) if '"checkpoint"' in x)
    obj = json.loads(lines[n])
    body, _ = parse_note(obj["note"])
    obj["note"] = sign_note(body, origin_for("w1"), OTHER.public_key_spki, OTHER.sign(body))
    lines[n] = json.dumps(obj, separators=(",", ":")) + "\n"
    put_lines(files[1], lines)
    report = verify(files, SIGNER.public_key_spki)
    line, message = only_failure(report)
    assert line == n + 1 and not report.failures[0].wrong_key and "another key" in message
    assert audit_main(["verify", *map(str, files), "--pubkey", str(_pem_of(SIGNER, tmp_path / "a.pem"))]) == 1
    out = capsys.readouterr().out
    assert "TAMPERING DETECTED" in out and "wrong --pubkey" not in out


def test_cli_retention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_files(tmp_path)
    key = str(_pem_of(SIGNER, tmp_path / "audit.pem"))
    pruned = [str(f) for f in files[2:]]
    kept = tmp_path / "kept.note"
    kept.write_text(notes_in(files[2])[0][1])
    assert audit_main(["verify", *pruned, "--pubkey", key]) == 0
    out = capsys.readouterr().out
    assert f"warn {files[2]}:1: verification starts at file #3, record #12" in out and out.endswith("OK\n")
    for flags in (["--complete"], ["--from-genesis"]):
        assert audit_main(["verify", *pruned, "--pubkey", key, *flags]) == 1
        out = capsys.readouterr().out
        assert f"FAIL {files[2]}:1: the log does not begin at genesis" in out
        assert "records #0..#11 (files #1..#2) are missing" in out and "TAMPERING DETECTED" in out
    for flags in (["--complete"], ["--from-genesis"], []):
        assert audit_main(["verify", *pruned, "--pubkey", key, "--from-checkpoint", str(kept), *flags]) == 0
        out = capsys.readouterr().out
        assert "warn" not in out and "note " in out and "retired" in out and out.endswith("OK\n")
    assert audit_main(["verify", *map(str, files[3:]), "--pubkey", key, "--from-checkpoint", str(kept)]) == 1
    assert "records #16..#17 were deleted" in capsys.readouterr().out
    # Notes that are not checkpoints, or not signed by the key, are usage errors naming the file.
    junk = tmp_path / "junk.note"
    junk.write_text("not a note\n")
    foreign = tmp_path / "foreign.note"
    body, _ = parse_note(kept.read_text())
    foreign.write_text(sign_note(body, origin_for("w1"), OTHER.public_key_spki, OTHER.sign(body)))
    binary = tmp_path / "binary.note"
    binary.write_bytes(b"\xff\xfe\x00")
    for option in ("--from-checkpoint", "--checkpoint"):
        for note in (junk, foreign, binary, tmp_path / "missing.note", tmp_path):
            assert audit_main(["verify", *pruned, "--pubkey", key, option, str(note)]) == 2
            err = capsys.readouterr().err
            assert str(note) in err and "Traceback" not in err
    assert audit_main(["verify", *pruned, "--pubkey", key, "--from-checkpoint", str(kept),
                       "--from-checkpoint", str(kept)]) == 2
    assert "one per writer" in capsys.readouterr().err
    bad_key = tmp_path / "bad.pem"
    bad_key.write_text("no key here\n")
    assert audit_main(["verify", *pruned, "--pubkey", str(bad_key)]) == 2
    assert str(bad_key) in capsys.readouterr().err


# -- output into a closed pipe ----------------------------------------------------------------------

OCSPCTL = str(Path(sys.executable).parent / "ocspctl")


def big_log(directory: Path, n: int) -> Path:
    async def go() -> None:
        log = await open_log(directory, every=1000)
        await asyncio.gather(*(log.append(rec(i)) for i in range(n)))  # group commits: few fsyncs
        await log.close()

    asyncio.run(go())
    (path,) = directory.glob("audit-*.jsonl")
    return path


def test_show_into_a_pipe_closed_by_its_reader(tmp_path: Path) -> None:
    """`ocspctl audit show ... | head -1`: the reader goes away while output is still coming."""
    path = big_log(tmp_path, 2000)  # about 1 MB of output: far more than a pipe and the buffers hold
    p = subprocess.Popen([OCSPCTL, "audit", "show", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 141, err
    assert err == b""
    assert json.loads(first)["index"] == 0


@pytest.mark.parametrize("command", ["show", "verify"])
def test_output_into_a_pipe_without_reader(tmp_path: Path, command: str) -> None:
    """`ocspctl audit ... | true`: nothing reads at all (the output is small: it is written at the end)."""
    path = write_log(tmp_path)
    key = _pem_of(SIGNER, tmp_path / "audit.pem")
    args = [str(path)] + (["--pubkey", str(key)] if command == "verify" else [])
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([OCSPCTL, "audit", command, *args], stdout=write_end, stderr=subprocess.PIPE,
                           timeout=60, check=False)
    finally:
        os.close(write_end)
    assert r.returncode == 141 and r.stderr == b""

