"""``ocspctl demo serve``: run ocsp-signer and ocsp-frontend on the demo PKI until Ctrl-C (or SIGTERM).

    ocspctl demo serve --dir D [--http-port N] [--timeout S]

It refuses to start when another program holds the demo's addresses (signer.ctl.demo.ports), reports
ready only once its own children answer on them, prints ready-to-paste ``openssl ocsp`` commands, and
stops the frontend, then the signer.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

from signer.ctl.common import PROG, CtlError, ocspctl_command, say
from signer.ctl.demo.layout import DEFAULT_HTTP_PORT, DEMO_CAS
from signer.ctl.demo.ports import in_use_problem, serves
from signer.ctl.demo.supervise import Child, wait_ready
from signer.ctl.demo.transport import health_credentials


def signer_serving(address: str, frontend_toml: Path | None = None) -> bool:
    """The signer answers Health; over mTLS with the frontend's certificate when frontend.toml has one."""
    import grpc

    from shared.rpc import signer_pb2, signer_pb2_grpc

    tls = health_credentials(frontend_toml) if frontend_toml is not None else None
    try:
        with (grpc.secure_channel(address, tls[0], options=tls[1]) if tls else
              grpc.insecure_channel(address)) as channel:
            reply = signer_pb2_grpc.SignerStub(channel).Health(signer_pb2.HealthRequest(), timeout=1)
            return bool(reply.serving)
    except grpc.RpcError:
        return False


def _http_healthy(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        try:
            conn.request("GET", "/-/health")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CtlError(f"{path} does not exist; run `{PROG} demo setup --dir {path.parent.parent}` "
                       "first") from None
    except tomllib.TOMLDecodeError as e:
        raise CtlError(f"{path}: not valid TOML: {e}") from None


def _client_commands(d: Path, url: str) -> list[str]:
    lines = []
    for spec in DEMO_CAS.values():
        ca = d / spec.dir_name / "ca.pem"
        for which in ("good", "revoked", "unknown"):
            cert = d / spec.dir_name / f"leaf-{which}.pem"
            lines.append(f"openssl ocsp -issuer {ca} -cert {cert} -url {url} -CAfile {ca} -resp_text")
    return lines


def cmd_demo_serve(args: argparse.Namespace) -> int:
    d = args.dir.resolve()
    signer_toml, frontend_toml = d / "etc" / "signer.toml", d / "etc" / "frontend.toml"
    signer_address = _read_toml(signer_toml)["listen"]["address"]
    listen = _read_toml(frontend_toml)["listen"]
    host, port = listen.get("host", "127.0.0.1"), int(listen.get("port", DEFAULT_HTTP_PORT))
    if args.http_port is not None and args.http_port != port:
        raise CtlError(f"{d} is set up for port {port}, not {args.http_port}; first run: {ocspctl_command()} "
                       f"demo setup --dir {d} --http-port {args.http_port} (this re-issues the leaf "
                       "certificates: their OCSP URL names the port)")
    problem = in_use_problem(d, signer_address, host, port, f"{ocspctl_command()} demo setup --dir {d}")
    if problem is not None:
        raise CtlError(problem)
    bindir = Path(sys.executable).parent

    def program(name: str) -> str:
        path = bindir / name
        if not path.exists():
            raise CtlError(f"{path} does not exist: is the project installed in this virtual environment?")
        return str(path)

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    children: list[Child] = []
    try:
        # Ready: the child is alive, its address answers, and the listening socket is the child's own
        # (another program on the same address cannot make it look ready).
        signer = Child("ocsp-signer", [program("ocsp-signer"), "--config", str(signer_toml)])
        children.append(signer)
        wait_ready(signer, lambda: signer_serving(signer_address, frontend_toml)
                    and serves(signer.proc.pid, signer_address), args.timeout, stop)
        if not stop.is_set():
            frontend = Child("ocsp-frontend", [program("ocsp-frontend"), "--config", str(frontend_toml)])
            children.append(frontend)
            wait_ready(frontend, lambda: _http_healthy(host, port) and serves(frontend.proc.pid, f"{host}:{port}"),
                        args.timeout, stop)
        for child in children:
            if child.exited() is not None:
                raise CtlError(child.died_message())
        if not stop.is_set():
            url = f"http://{host}:{port}"
            say(f"ocsp-signer on {signer_address}, ocsp-frontend on {url}/ (Ctrl-C stops both)")
            say("try:")
            for line in _client_commands(d, url):
                say(f"  {line}")
            say(f"revoke while running: {ocspctl_command()} demo revoke --dir {d} --ca ec --serial <HEX> "
                "--reason superseded")
        while not stop.is_set():
            for child in children:
                if child.exited() is not None:
                    raise CtlError(child.died_message())
            stop.wait(0.2)
    finally:
        for child in reversed(children):  # frontend first, then the signer it talks to
            child.stop()
    if received:
        say(f"stopped ({signal.Signals(received[0]).name})")
    return 0
