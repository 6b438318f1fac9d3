"""Logs with real processes: a timestamp, level and process on every line of both halves (workers
included), the JSON format, --log-level, the access log's fields, and the trace from an access log
line to the signer's audit record; --version of the three commands.

Three stacks of their own on the session's demo PKI:
- ``text``: a signer and a frontend with two workers each, text lines, the access log on stderr;
- ``json``: one process each, JSON lines, the frontend at DEBUG with its access log in a file;
- a frontend with ``access = false`` at WARNING (beside the json stack's signer), and a two-worker
  signer at WARNING.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from signer.audit.verify import show
from tests.integration.conftest import Demo, Process, free_port, signer_healthy, tool, wait_until
from tests.integration.ocsp_client import build_request, load_cert, random_nonce
from tests.integration.private_stack import demo_config, ocsp_frontend, ocsp_signer, running, short_dir

pytestmark = pytest.mark.integration

HEAD = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (ocsp-signer|ocsp-frontend): "
                  r"(DEBUG|INFO|WARNING|ERROR|CRITICAL): ")
FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass
class Stack:
    signer: Process
    frontend: Process
    port: int
    writer: str  # the signer's audit writer_id
    address: str  # the signer's
    access_file: Path | None = None

    def access_lines(self) -> list[str]:
        text = (self.access_file or self.frontend.log).read_text(errors="replace")
        return [line for line in text.splitlines() if "frontend.access" in line]


def signer_config(demo: Demo, work: Path, name: str, *, workers: int, append: str = "") -> tuple[Path, str]:
    address = f"unix:{short_dir() / 'signer.sock'}"
    conf = demo_config(demo, "signer.toml", work / f"{name}.toml",
                       {"address": address, "socket": None, "writer_id": name, "workers": workers}, append=append)
    return conf, address


def frontend_config(demo: Demo, work: Path, name: str, address: str, *, workers: int,
                    append: str = "") -> tuple[Path, int]:
    port = free_port()
    conf = demo_config(demo, "frontend.toml", work / f"{name}.toml",
                       {"port": port, "address": address, "workers": workers}, append=append)
    return conf, port


def with_level(p: Process, level: str) -> Process:
    p.argv += ["--log-level", level]
    return p


@pytest.fixture(scope="module")
def text_stack(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("logs_text")
    sconf, address = signer_config(demo, work, "logs_text", workers=2)
    fconf, port = frontend_config(demo, work, "frontend-text", address, workers=2)
    signer = ocsp_signer(demo, sconf, address, name="ocsp-signer-logs-text")
    frontend = ocsp_frontend(demo, fconf, port, name="ocsp-frontend-logs-text")
    with running(signer, frontend):
        # Health answers once one worker serves: wait for all of both halves.
        for p, says in ((signer, "supervisor: serving on "), (frontend, "supervisor: frontend.workers: 2 workers")):
            wait_until(lambda p=p, says=says: says in p.log.read_text(errors="replace"), 60, f"{p.name}: {says}")
        yield Stack(signer, frontend, port, "logs_text", address)


@pytest.fixture(scope="module")
def json_stack(demo: Demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("logs_json")
    access = work / "access.log"
    sconf, address = signer_config(demo, work, "logs_json", workers=1, append='\n[log]\nformat = "json"\n')
    fconf, port = frontend_config(demo, work, "frontend-json", address, workers=1,
                                  append=f'\n[log]\nformat = "json"\naccess_file = "{access}"\n')
    signer = ocsp_signer(demo, sconf, address, name="ocsp-signer-logs-json")
    frontend = with_level(ocsp_frontend(demo, fconf, port, name="ocsp-frontend-logs-json"), "DEBUG")
    with running(signer, frontend):
        yield Stack(signer, frontend, port, "logs_json", address, access)


class Client:
    """One keep-alive connection (so a frontend worker that cached an answer serves the repeat)."""

    def __init__(self, demo: Demo, port: int) -> None:
        self.demo = demo
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def request(self, ca: str, which: str) -> bytes:
        return build_request(load_cert(self.demo.path(ca, f"leaf-{which}.pem")), load_cert(self.demo.path(ca, "ca.pem")))

    def post(self, body: bytes) -> bytes:
        self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/ocsp-request"})
        return self.conn.getresponse().read()

    def get(self, der: bytes) -> bytes:
        self.conn.request("GET", "/" + base64.b64encode(der).decode())
        return self.conn.getresponse().read()

    def nonce(self, ca: str, which: str) -> bytes:
        cert, issuer = load_cert(self.demo.path(ca, f"leaf-{which}.pem")), load_cert(self.demo.path(ca, "ca.pem"))
        return self.post(build_request(cert, issuer, nonce=random_nonce()))

    def close(self) -> None:
        self.conn.close()


def serial(demo: Demo, ca: str, which: str) -> str:
    return format(load_cert(demo.path(ca, f"leaf-{which}.pem")).serial_number, "X")


def new_lines(read: Callable[[], list[str]], before: int, count: int) -> list[str]:
    wait_until(lambda: len(read()) >= before + count, 10, f"{count} more access lines")
    return read()[before:]


def audit_records(demo: Demo, writer: str, request_id: str) -> list[dict[str, object]]:
    files = sorted(demo.path("audit").glob(f"audit-{writer}*-*.jsonl"))
    assert files, f"no audit files of {writer}"
    return [json.loads(found.raw) for found in show(files, request_id=request_id)]


def fields(line: str) -> dict[str, str]:
    return dict(FIELD.findall(line.split(": frontend.access: ", 1)[1]))


# -- every line --------------------------------------------------------------------------------------------


def test_every_line_of_both_halves_has_a_time_level_and_process(demo: Demo, text_stack: Stack) -> None:
    client = Client(demo, text_stack.port)
    client.post(client.request("rsa-ca", "good"))
    client.close()
    wait_until(lambda: text_stack.access_lines(), 10, "an access line")
    for p, roles in ((text_stack.signer, ("supervisor: ", "worker 0: ", "worker 1: ")),
                     (text_stack.frontend, ("supervisor: ", "worker 1: ", "worker 2: "))):
        lines = p.log.read_text(errors="replace").splitlines()
        assert lines and all(HEAD.match(line) for line in lines), [x for x in lines if not HEAD.match(x)]
        for role in roles:  # one log: the supervisor's lines and each worker's, each saying whose
            assert any(HEAD.match(line) and line[HEAD.match(line).end():].startswith(role)  # type: ignore[union-attr]
                       for line in lines), (role, lines)
        assert all(line[HEAD.match(line).end():].startswith(roles) for line in lines)  # type: ignore[union-attr]
    assert "ocsp-frontend: INFO: worker " in text_stack.access_lines()[0]


# -- the access log and the trace ----------------------------------------------------------------------------


def test_access_lines_and_their_trace_to_the_audit_log(demo: Demo, text_stack: Stack) -> None:
    # leaf-good3: never revoked in the session demo (test_end_to_end revokes leaf-good2), first asked here
    before = len(text_stack.access_lines())
    client = Client(demo, text_stack.port)
    good = client.request("rsa-ca", "good3")
    revoked = client.request("rsa-ca", "revoked")
    client.post(good)  # signed
    client.post(good)  # a cache hit of the same worker (one connection)
    client.get(revoked)  # signed
    client.get(revoked)  # a hit
    client.post(b"not an OCSP request")
    client.nonce("ec-ca", "good")
    client.close()
    lines = new_lines(text_stack.access_lines, before, 6)
    assert len(lines) == 6, lines
    signed, hit, get_signed, get_hit, malformed, nonce = map(fields, lines)

    good_serial, revoked_serial = serial(demo, "rsa-ca", "good3"), serial(demo, "rsa-ca", "revoked")
    assert signed | {"id": "", "us": ""} == {
        "client": "127.0.0.1", "method": "POST", "answer": "successful", "ca": "demo-rsa", "serial": good_serial,
        "cert": "good", "sig": signed["id"], "via": "signed", "id": "", "us": ""}
    assert re.fullmatch(r"[0-9a-f]{10}-\d+", signed["id"]) and int(signed["us"]) > 0
    # The hit: an id of its own, and the signature it served named in sig.
    assert (hit["via"], hit["sig"], hit["serial"], hit["cert"]) == ("cache", signed["id"], good_serial, "good")
    assert hit["id"] != signed["id"] and hit["id"].split("-")[0] == signed["id"].split("-")[0]
    assert (get_signed["method"], get_signed["via"], get_signed["serial"], get_signed["cert"]) == (
        "GET", "signed", revoked_serial, "revoked")
    assert (get_hit["method"], get_hit["via"], get_hit["sig"]) == ("GET", "cache", get_signed["id"])
    assert malformed | {"id": "", "us": ""} == {
        "client": "127.0.0.1", "method": "POST", "answer": "malformedRequest", "ca": "-", "serial": "-",
        "cert": "-", "sig": "-", "via": "-", "id": "", "us": ""}
    assert (nonce["ca"], nonce["via"], nonce["sig"], nonce["cert"]) == ("demo-ec", "nonce", nonce["id"], "good")
    assert nonce["serial"] == serial(demo, "ec-ca", "good")

    # The trace: each signature's id is the request_id of exactly one audit record, for that serial;
    # the cache hits' sig leads to the same record as the line that signed.
    for line, ser in ((signed, good_serial), (get_signed, revoked_serial), (nonce, nonce["serial"])):
        (record,) = audit_records(demo, text_stack.writer, line["id"])
        assert record["type"] == "sig" and record["request_id"] == line["id"], record
        assert ser.lower().lstrip("0") in json.dumps(record).lower(), record
    assert audit_records(demo, text_stack.writer, hit["sig"]) == audit_records(demo, text_stack.writer, signed["id"])
    # ... and `ocspctl audit show --request-id` finds it (the README's worked example).
    shown = demo.ctl("audit", "show", str(demo.path("audit")), "--request-id", hit["sig"])
    (record_line,) = shown.stdout.splitlines()
    assert json.loads(record_line)["request_id"] == signed["id"]


def test_a_get_path_that_is_no_request_is_logged(demo: Demo, text_stack: Stack) -> None:
    before = len(text_stack.access_lines())
    conn = http.client.HTTPConnection("127.0.0.1", text_stack.port, timeout=10)
    conn.request("GET", "/MEQwQjBAMD4wPDAJBgUrDgMCGgUABBQ")  # base64 of a truncated request
    conn.getresponse().read()
    conn.request("GET", "/-/health")  # not an OCSP request: no line
    conn.getresponse().read()
    conn.close()
    (line,) = new_lines(text_stack.access_lines, before, 1)
    f = fields(line)
    assert (f["method"], f["answer"], f["via"]) == ("GET", "malformedRequest", "-")
    assert len(text_stack.access_lines()) == before + 1


# -- JSON, --log-level, access_file, access = false ----------------------------------------------------


def test_json_lines_of_both_halves_and_the_access_file(demo: Demo, json_stack: Stack) -> None:
    client = Client(demo, json_stack.port)
    good = client.request("rsa-ca", "good3")
    client.post(good)
    client.post(good)
    client.post(b"\x30\x03junk")
    client.close()
    lines = new_lines(json_stack.access_lines, 0, 3)
    signed, hit, malformed = (json.loads(line) for line in lines)
    assert signed["via"] == "signed" and signed["serials"] == [serial(demo, "rsa-ca", "good3")]
    assert signed["cert"] == ["good"] and signed["sig"] == signed["id"] and signed["ca"] == "demo-rsa"
    assert (hit["via"], hit["sig"]) == ("cache", signed["id"]) and isinstance(hit["us"], int)
    assert (malformed["answer"], malformed["via"], malformed["ca"]) == ("malformedRequest", None, None)
    assert [r["request_id"] for r in audit_records(demo, json_stack.writer, signed["id"])] == [signed["id"]]
    for p in (json_stack.signer, json_stack.frontend):
        objs = [json.loads(line) for line in p.log.read_text().splitlines()]
        assert objs
        for o in objs:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]), o
            assert {"level", "prog", "pid", "role", "worker", "logger", "msg"} <= set(o), o
            assert (o["role"], o["worker"]) == ("main", None)
        assert any(o["level"] == "INFO" for o in objs)
    frontend = [json.loads(line) for line in json_stack.frontend.log.read_text().splitlines()]
    assert not any(o["logger"] == "frontend.access" for o in frontend)  # they went to access_file
    # --log-level DEBUG: the frontend's debug lines (the malformed request's, for one) are written.
    assert any(o["level"] == "DEBUG" and o["msg"].startswith("answering MALFORMED_REQUEST") for o in frontend)


def test_access_off_and_warning_level(demo: Demo, json_stack: Stack, tmp_path: Path) -> None:
    address = json_stack.address
    fconf, port = frontend_config(demo, tmp_path, "frontend-quiet", address, workers=1,
                                  append="\n[log]\naccess = false\n")
    quiet = with_level(ocsp_frontend(demo, fconf, port, name="ocsp-frontend-quiet"), "WARNING")
    with running(quiet):
        client = Client(demo, port)
        good = client.request("rsa-ca", "good")
        for _ in range(3):
            assert client.post(good)[:1] == b"\x30"
        client.post(b"junk")
        client.close()
    text = quiet.log.read_text()
    assert "frontend.access" not in text and "client=" not in text
    assert ": INFO: " not in text and ": DEBUG: " not in text  # not even "listening on"


def test_signer_workers_at_warning_write_no_info(demo: Demo, text_stack: Stack, tmp_path: Path) -> None:
    conf, address = signer_config(demo, tmp_path, "logs_warning", workers=2)
    quiet = with_level(ocsp_signer(demo, conf, address, name="ocsp-signer-quiet"), "WARNING")
    with running(quiet):
        assert signer_healthy(address, None)
    text = quiet.log.read_text()
    assert " INFO: " not in text, text  # the supervisor's nor its workers' (each started with the level)
    assert " INFO: supervisor: serving on " in text_stack.signer.log.read_text()  # what INFO would have said
    assert all(HEAD.match(line) for line in text.splitlines()), text


# -- --version -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["ocsp-frontend", "ocsp-signer", "ocspctl"])
def test_version(command: str) -> None:
    r = subprocess.run([tool(command), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{command} {metadata.version('ocsp-responder')}\n"
