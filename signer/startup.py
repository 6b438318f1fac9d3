"""What the signer checks before it serves, in one place: a start (``signer.service.serve``) and
``ocsp-signer --check`` both run ``prepare``, so --check cannot say OK to a configuration the start
refuses, and both print the same message for the same fault.

In order, each failure a ``ConfigError`` naming the file and key:

1. the plaintext rule (no [tls] table: unix socket or loopback only; plaintext loopback TCP is
   allowed with a WARNING, since every local user can sign through it) and the addresses: the listen
   and metrics hosts resolve, the listen and admin socket paths can be created and are not served by
   another process, the listen socket's private directory (signer.local_callers) is the signer's;
2. the signer's own status data ([policy] verify_status): every CA file's [status] table the signer
   uses is loaded and verified as the frontend does (a warning names each CA whose statuses are not
   checked, and says what that means);
3. token login (PIN, module, token);
4. every responder: the token key matches its certificate and signs a probe that verifies;
5. the audit key: present, of a supported type, signs a probe that verifies with its public key;
6. the audit log: directory created if missing and accepting new files, the current file
   appendable, this writer_id's lock free, the existing chain readable, the checkpoint policy valid.

--check stops there: it binds no port and writes no audit record. A start also checks first that a TCP
listen address is free (``check_bind``: --check runs beside the live signer, which holds it), then
opens the log for writing (a signed checkpoint) and listens; a start that fails after that removes
the audit file it created if no record went into it (``AuditLog.abandon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_der_public_key

from shared.address import is_loopback_host
from shared.clock import Clock
from shared.config import ConfigError
from signer.audit import AuditLog, AuditUnavailable, Pkcs11CheckpointSigner, WriterBusy
from signer.config import SignerConfig
from signer.responders import ResponderSet, load_responders, signature_verifies
from signer.status_verify import StatusVerifier
from signer.token import Pkcs11Token, Token, TokenError, read_pin
from signer.unix_socket import private_dir_for, private_dir_problem

log = logging.getLogger("ocsp-signer")

# Signed with the audit key at start and by --check, verified against its public key.
AUDIT_PROBE = b"ocsp-signer: can the audit key sign checkpoints?"

OpenLog = Callable[[SignerConfig, Pkcs11CheckpointSigner, Clock, Executor], Awaitable[AuditLog]]


@dataclass
class Prepared:
    token: Token
    responders: ResponderSet
    audit_signer: Pkcs11CheckpointSigner
    audit: AuditLog | None  # None for --check
    audit_records: int  # records already in this writer's chain
    status: StatusVerifier | None = None  # the signer's own status data ([policy] verify_status)
    # --check: (writer_id, records in its chain) of each writer this config starts (one per worker)
    writers: tuple[tuple[str, int], ...] = ()


# -- no token needed ----------------------------------------------------------------------------------


def check_plaintext_allowed(config: SignerConfig) -> None:
    """Without a [tls] table gRPC is plaintext: only a unix socket or a loopback address may listen."""
    listen = config.listen
    if listen.kind == "unix" or config.tls is not None:
        return
    if not is_loopback_host(listen.host or ""):
        raise ConfigError(config.file, "listen.address",
                          f"{listen.address} is not a loopback address; plaintext gRPC may only listen on "
                          "unix: sockets or loopback (mTLS is not configured)")


def plaintext_tcp_warning(config: SignerConfig) -> str | None:
    """The warning for plaintext loopback TCP (no [tls]): any local user may connect and sign."""
    if config.listen.kind != "tcp" or config.tls is not None:
        return None
    return (f"listen.address {config.listen.address} is plaintext TCP: every local user (any process on "
            "this host) can connect and get responses signed, and the audit log can name the caller only "
            "by its port. Use a unix socket instead (listen.address = \"unix:/run/ocsp-signer/signer.sock\" "
            "with listen.socket_mode: only the signer's user and group may connect, and each caller's uid "
            "and pid are logged), or mTLS ([tls] with allowed_clients)")


def _check_host(config: SignerConfig, key: str, host: str, port: int) -> None:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(config.file, key, f"cannot resolve {host!r}: {e.strerror or e}") from None


def _check_socket_path(config: SignerConfig, key: str, path: Path) -> None:
    """A unix socket the signer will create at ``path``: its directory accepts it, and whatever is
    there is a stale socket (gRPC replaces a socket file; a live one would be taken from its server)."""
    directory = path.parent
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(config.file, key, f"cannot create the socket {path}: its directory {directory} is "
                                            "not writable by this user")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(config.file, key, f"cannot create the socket {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(config.file, key, f"cannot create the socket {path}: something that is not a socket "
                                            "is in the way")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return  # nobody listens: a socket left by a process that is gone
    raise ConfigError(config.file, key, f"another process is listening on {path} (another signer?)")


def check_config(config: SignerConfig, *, listen_checked: bool = False) -> None:
    """The checks that need no token: plaintext rule, listen / admin / metrics addresses.
    ``listen_checked``: a signer worker, whose supervisor checked and holds the listen address."""
    check_plaintext_allowed(config)
    if not listen_checked:
        check_listen(config)
    if config.admin.socket is not None:
        _check_socket_path(config, "admin.socket", config.admin.socket)
    if config.metrics.address is not None:
        host, _, port = config.metrics.address.rpartition(":")
        _check_host(config, "metrics.address", host.strip("[]"), int(port))


def check_listen(config: SignerConfig) -> None:
    """``listen.address`` can be listened on: its host resolves, or its socket path and private
    directory can be made and nobody serves them."""
    listen = config.listen
    if listen.kind == "unix":
        assert listen.path is not None
        _check_socket_path(config, "listen.address", listen.path)
        problem = private_dir_problem(private_dir_for(listen.path))
        if problem is not None:
            raise ConfigError(config.file, "listen.address", f"cannot make the signer's private directory: "
                                                             f"{problem}")
    else:
        _check_host(config, "listen.address", listen.host or "", listen.port or 0)
        warning = plaintext_tcp_warning(config)
        if warning is not None:
            log.warning("%s", warning)


def tcp_bind_problem(config: SignerConfig) -> str | None:
    """Why a TCP ``listen.address`` cannot be bound now ("Address already in use"), found by binding a
    plain socket to it as gRPC will (SO_REUSEADDR, no port sharing) and closing it again; None when it
    can be, or for a unix: address or port 0."""
    listen = config.listen
    if listen.kind != "tcp" or not listen.port:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_bind(config: SignerConfig) -> None:
    """A start's first check (not --check's, which must pass while the signer runs): the TCP listen
    address is free, so a port another process holds is refused before the token or the audit log is
    touched, in one clean line (gRPC's own bind failure would print a core log line first)."""
    problem = tcp_bind_problem(config)
    if problem is not None:
        raise ConfigError(config.file, "listen.address", f"cannot listen on {config.listen.address}: {problem}")


# -- the token ---------------------------------------------------------------------------------------


def open_token(config: SignerConfig) -> Pkcs11Token:
    """Read the PIN and log in. Blocking. Raises ConfigError naming the signer.toml key at fault."""
    t = config.token
    try:
        pin = read_pin(t.pin_file, t.pin_env, consume=True)
    except TokenError as e:
        raise ConfigError(config.file, "token.pin_file" if t.pin_file else "token.pin_env", str(e)) from None
    try:
        return Pkcs11Token(t.module, pin=pin, token_label=t.label, token_serial=t.serial)
    except TokenError as e:
        msg = str(e)
        if msg.startswith(("no token", "several tokens")):  # (it names the tokens found: any text)
            key = "token.label" if t.label is not None else "token.serial"
        elif "PIN" in msg:
            key = "token.pin_file" if t.pin_file else "token.pin_env"
        elif "module" in msg:
            key = "token.module"
        else:
            key = "token.label" if t.label is not None else "token.serial"
        raise ConfigError(config.file, key, msg) from None


def load_audit_key(config: SignerConfig, token: Token) -> Pkcs11CheckpointSigner:
    """The audit key in the token, proven usable by a probe signature. Blocking (token calls)."""
    label = config.audit.key_label
    try:
        signer = Pkcs11CheckpointSigner(token, label)
    except TokenError as e:
        raise ConfigError(config.file, "audit.key_label", str(e)) from None
    except ValueError as e:  # algorithm_for_key: an unsupported key type
        raise ConfigError(config.file, "audit.key_label", f"unusable audit key: {e}") from None
    try:
        signature = signer.sign(AUDIT_PROBE)
    except TokenError as e:
        raise ConfigError(config.file, "audit.key_label",
                          f"cannot sign with the token's private key {label!r}: {e}") from None
    if not signature_verifies(load_der_public_key(signer.public_key_spki), signer.algorithm, signature,
                              AUDIT_PROBE):
        raise ConfigError(config.file, "audit.key_label",
                          f"the token's private key {label!r} is not the pair of its public key: a test "
                          "signature does not verify, so no checkpoint would")
    return signer


# -- the audit log -----------------------------------------------------------------------------------


async def _open_audit(config: SignerConfig, audit_signer: Pkcs11CheckpointSigner, clock: Clock,
                      executor: Executor, open_log: OpenLog | None) -> tuple[AuditLog | None, int]:
    a = config.audit
    try:
        if open_log is not None:
            audit = await open_log(config, audit_signer, clock, executor)
            return audit, audit.size
        # --check: the same directory, lock and chain checks, without a checkpoint signer (so nothing
        # is written), then released.
        probe = await AuditLog.open(a.dir, writer_id=a.writer_id, signer=None,
                                    checkpoint_every=a.checkpoint_every, checkpoint_interval=a.checkpoint_interval,
                                    max_file_bytes=a.max_file_bytes, clock=clock, executor=executor)
        try:
            await probe.check_writable()
            return None, probe.size
        finally:
            await probe.close()
    except WriterBusy as e:
        raise ConfigError(config.file, "audit.writer_id", e.reason) from None
    except AuditUnavailable as e:
        raise ConfigError(config.file, "audit.dir", f"audit log unusable: {e.reason}") from None
    except ValueError as e:  # the checkpoint policy (the config's bounds should have caught it)
        raise ConfigError(config.file, "audit.checkpoint_every", str(e)) from None


async def open_audit(config: SignerConfig, audit_signer: Pkcs11CheckpointSigner, clock: Clock,
                     executor: Executor) -> AuditLog:
    """Open (resume) this writer's audit chain for writing, with checkpoints signed by the audit key.

    The signer does not start without it: never signing unlogged starts here. Raises WriterBusy or
    AuditUnavailable (``prepare`` turns them into ConfigErrors).
    """
    a = config.audit
    audit = await AuditLog.open(a.dir, writer_id=a.writer_id, signer=audit_signer,
                                checkpoint_every=a.checkpoint_every, checkpoint_interval=a.checkpoint_interval,
                                max_file_bytes=a.max_file_bytes, clock=clock, executor=executor,
                                group_window=a.group_window.total_seconds())
    try:
        await audit.check_writable()  # the check --check makes, so both report a fault alike
        # A new log starts with a signed (genesis) checkpoint: records are then never without a signed
        # anchor before them, and a verifier can tell "not yet checkpointed" from "checkpoints stripped".
        await audit.checkpoint()
    except BaseException:
        with contextlib.suppress(AuditUnavailable):  # its final checkpoint fails like the rest did
            await audit.close()
        raise
    return audit


def status_warnings(config: SignerConfig) -> list[str]:
    """What start-up says about CAs whose statuses the signer does not check against its own data."""
    risk = ("a compromised frontend can have any status signed for its certificates (e.g. good for a "
            "revoked one) within policy; see README, Threat model")
    if config.policy.verify_status is False:
        return [(f"policy.verify_status = false in {config.file}: statuses are not checked against the "
                 f"signer's own data; {risk}")]
    lines = []
    for rc in config.responders:
        if rc.status is not None:
            continue
        why = rc.status_unused or "its CA file has no [status] table"
        lines.append(f"CA {rc.name!r}: statuses not checked against the signer's own data ({why}; "
                     f"{rc.file}); {risk}")
    return lines


# -- all of it ---------------------------------------------------------------------------------------


async def prepare(config: SignerConfig, *, token: Token | None, clock: Clock, executor: Executor,
                  open_log: OpenLog | None, generation: int = 1, worker: bool = False) -> Prepared:
    """Run every start-up check (module docstring). ``token``: a logged-in token to use (tests), else
    log in here; a token opened here is closed again when a check fails. ``executor``: the one thread
    token calls run on. ``open_log``: how a start opens the audit log for writing (``open_audit``);
    None for --check, which only probes it. ``generation``: of the responders loaded (a signer worker
    gets its supervisor's); ``worker``: a signer worker (its supervisor checked the listen address).

    Raises ConfigError for anything the operator must fix.
    """
    check_config(config, listen_checked=worker)
    if open_log is not None and not worker:
        check_bind(config)
    loop = asyncio.get_running_loop()
    status = await loop.run_in_executor(None, StatusVerifier.load, config, clock)
    for line in status_warnings(config):
        log.warning("%s", line)
    owned = None
    if token is None:
        token = owned = await loop.run_in_executor(executor, open_token, config)
    try:
        responders = await loop.run_in_executor(executor, load_responders, config, token, generation)
        audit_signer = await loop.run_in_executor(executor, load_audit_key, config, token)
        audit, records = await _open_audit(config, audit_signer, clock, executor, open_log)
    except BaseException:
        if owned is not None:
            await loop.run_in_executor(executor, owned.close)
        raise
    return Prepared(token=token, responders=responders, audit_signer=audit_signer, audit=audit,
                    audit_records=records, status=status)


async def check(config: SignerConfig, clock: Clock) -> Prepared:
    """``ocsp-signer --check``: every start-up check, then log out. Binds nothing, writes no record."""
    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkcs11")
    try:
        # Signer workers: worker 0's view (its writer_id), then every other worker's audit chain.
        view = config.for_worker(0, None) if config.workers > 1 else config
        prepared = await prepare(view, token=None, clock=clock, executor=executor, open_log=None)
        writers = [(view.audit.writer_id, prepared.audit_records)]
        try:
            for number in range(1, config.workers):
                other = config.for_worker(number, None)
                _, records = await _open_audit(other, prepared.audit_signer, clock, executor, None)
                writers.append((other.audit.writer_id, records))
        finally:
            await asyncio.get_running_loop().run_in_executor(executor, prepared.token.close)
        return dataclasses.replace(prepared, writers=tuple(writers))
    finally:
        executor.shutdown(wait=True)
