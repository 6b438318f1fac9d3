"""The signer's configuration: etc/signer.toml and the ``[responder]`` and ``[status]`` tables of each
ca.d/*.toml (``[status]`` read by the frontend's own parser, shared.status.config).

Everything is validated here, before anything starts: the files are read, the certificates parsed,
each responder certificate checked against its CA. Errors name the file and the key
(``ConfigError``). What needs the token (the key behind ``key_label``) is checked by
``signer.responders.load_responders``.

    # etc/signer.toml
    ca_dir = "ca.d"                 # directory of CA files, one *.toml per CA
    [listen]
    address = "127.0.0.1:50051"     # host:port, or unix:/path/to/socket
    min_ping_interval = "10s"       # keepalive pings closer together than this are "too many pings"
    max_concurrent_rpcs = 256       # Sign/Health/Responders/Admin calls in progress at once (then RESOURCE_EXHAUSTED)
    max_watchers = 128              # Watch streams open at once (then RESOURCE_EXHAUSTED)
    max_concurrent_streams = 64     # calls in progress on one connection (HTTP/2; more wait in the client)
    max_connections = 512           # client connections at once (more are closed at once)
    max_signatures_in_flight = 1024 # signatures accepted, not yet answered (each worker); then RESOURCE_EXHAUSTED
    max_connection_age = "1h"       # a connection is recycled (GOAWAY) after this long ...
    max_connection_age_grace = "30s"   # ... and closed this long later, calls still on it or not
    socket_mode = "0660"            # unix: only: "0600" (the signer's user) or "0660" (+ its group)
    max_socket_connections = 64     # unix: only: connections open at once (each costs 3 descriptors)
    [token]
    module = "/usr/lib/softhsm/libsofthsm2.so"
    label = "ocsp"                  # exactly one of label / serial
    pin_file = "/etc/ocsp/token.pin"   # exactly one of pin_file / pin_env
    [policy]
    max_validity = "10d"            # longest nextUpdate - thisUpdate the signer will sign
    max_clock_skew = "5m"           # how far ahead of our clock thisUpdate/revocationTime may be
    max_cert_ids = 8                # most SingleResponses in one signed response
    max_batch = 64                  # most requests in one SignBatch call (RESOURCE_EXHAUSTED beyond)
    expiry_warning = "30d"          # warn (log + metric) when a responder certificate expires sooner
    verify_status = true            # check each status against the signer's own copy of the CA's
                                    # [status] data (read now; the Sign path uses it: issue 9);
                                    # absent: on for the CA files whose [status] files are here
    [signer]                        # optional
    workers = 2                     # signer processes behind listen.address (default: one per usable
                                    # CPU; 1 = this process alone): signer.workers
    [admin]                         # optional: ocspctl rotate and other Admin RPCs
    socket = "/run/ocsp/admin.sock" # unix socket for Admin RPCs (default: none)
    socket_mode = "0600"            # its permissions: "0600" (owner) or "0660" (+ group)
    allowed_clients = []            # mTLS client identities allowed Admin RPCs on the main listener
    [metrics]                       # optional
    address = "127.0.0.1:9103"      # Prometheus text exposition on http://ADDRESS/metrics (default: off)
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared.ca_keys import CA_FILE_KEYS
from shared.config import ConfigError, Keys, Section, read_certificate
from shared.cpus import usable_cpus
from shared.logs import read_format
from shared.status.config import StatusConfig, missing_files, read_status_config
from signer.tls_config import TLS_KEYS, TlsConfig, load_tls
from signer.unix_socket import MAX_PATH_BYTES, SOCKET_MODES, longest_private_path, private_dir_for

# The CA/Browser Forum Baseline Requirements' longest: a subscriber CRL's nextUpdate may be 10 days
# after its thisUpdate (4.9.7), and a CRL-backed answer carries the CRL's window.
DEFAULT_MAX_VALIDITY = timedelta(days=10)
DEFAULT_MAX_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_MAX_CERT_IDS = 8  # modest: each entry is echoed into the answer and its audit record
DEFAULT_EXPIRY_WARNING = timedelta(days=30)
# The frontend's keepalive ([signer] keepalive, default 30s) must not be shorter: gRPC answers a client that
# pings more often with GOAWAY "too_many_pings", which drops its connection and the calls on it.
DEFAULT_MIN_PING_INTERVAL = timedelta(seconds=10)
# The main unix socket: the signer's user and group may connect (a co-located frontend's user is put in
# the signer's group); each connection is relayed (3 file descriptors: client, relay, gRPC's side).
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_MAX_SOCKET_CONNECTIONS = 64
MAX_SOCKET_CONNECTIONS_LIMIT = 4096
# A sanity bound, not a policy: RFC 6960 puts no limit on requestList, we do.
MAX_CERT_IDS_LIMIT = 1000
DEFAULT_MAX_BATCH = 64  # requests in one SignBatch: the frontend's batching sender sends up to 64
MAX_BATCH_LIMIT = 1024
MAX_WORKERS = 256  # [signer] workers: processes behind one listen address
# [listen] max_signatures_in_flight: about half a second of P-256 signing for one process (~2,000/s);
# past it a request waits longer in the signer than it would on a retry.
DEFAULT_MAX_IN_FLIGHT = 1024
# [audit] min_free default: room for the log to keep growing while someone frees space.
DEFAULT_MIN_FREE = 1 << 30
DEFAULT_SPACE_CHECK_INTERVAL = timedelta(seconds=10)

# Every key of signer.toml (shared.config.Section.load checks the file against them; a CA file's keys
# are shared.ca_keys'). A key read below must be declared here.
SIGNER_KEYS: Keys = {
    "ca_dir": None,
    "listen": dict.fromkeys((
        "address", "min_ping_interval", "max_concurrent_rpcs", "max_watchers", "max_concurrent_streams",
        "max_connections", "max_signatures_in_flight", "max_connection_age", "max_connection_age_grace",
        "socket_mode", "max_socket_connections")),
    # "pin" is declared to be refused with a message of its own (_token).
    "token": dict.fromkeys(("module", "label", "serial", "pin_file", "pin_env", "pin")),
    "policy": dict.fromkeys(("max_validity", "max_clock_skew", "max_cert_ids", "max_batch", "expiry_warning",
                             "verify_status")),
    "admin": dict.fromkeys(("socket", "socket_mode", "allowed_clients")),
    "metrics": dict.fromkeys(("address",)),
    "audit": dict.fromkeys((
        "dir", "key_label", "writer_id", "checkpoint_every", "checkpoint_interval", "max_file_bytes",
        "group_window", "min_free", "space_check_interval")),
    "tls": TLS_KEYS,
    "signer": dict.fromkeys(("workers",)),
    "log": dict.fromkeys(("format",)),
}


@dataclass(frozen=True, slots=True)
class ListenLimits:
    """What one caller, or all of them together, may hold on the listener (README, "Limits and
    hardening"). Read from ``[listen]``; signer.service turns them into gRPC server options."""

    # Unary calls (Sign, Health, Responders, Admin) in progress at once; past it gRPC answers
    # RESOURCE_EXHAUSTED at once. Watch streams are counted apart (max_watchers), so open streams can
    # never take the slots Sign needs: the server's whole limit is the sum of the two.
    max_concurrent_rpcs: int = 256
    # Watch streams open at once (one per frontend process and signer address); past it Watch is
    # refused with RESOURCE_EXHAUSTED (the frontend retries, and SignReply generations fill the gap).
    max_watchers: int = 128
    # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls in progress on one connection; a client's calls
    # past it wait in the client (within their deadline), so one connection cannot take every slot.
    max_concurrent_streams: int = 64
    # Client connections at once (grpc.max_allowed_incoming_connections); more are closed on accept.
    max_connections: int = 512
    # A connection is sent GOAWAY after this long (gRPC adds +-10 % jitter) and closed ``grace`` later
    # with whatever is still open on it (the Watch stream; the client reconnects): no client holds a
    # connection, its streams and buffers for good.
    max_connection_age: timedelta = timedelta(hours=1)
    max_connection_age_grace: timedelta = timedelta(seconds=30)
    # Signatures accepted and not yet answered in one signer process (each worker): past it a request
    # fails RESOURCE_EXHAUSTED at once instead of queueing for the token (signer.service).
    max_signatures_in_flight: int = DEFAULT_MAX_IN_FLIGHT


@dataclass(frozen=True, slots=True)
class ListenConfig:
    # As given ("host:port" or "unix:/abs/path"); relative unix paths are made absolute.
    address: str
    # "unix" or "tcp".
    kind: str
    host: str | None = None  # tcp only, without brackets
    port: int | None = None  # tcp only; 0 = any free port
    path: Path | None = None  # unix only
    # Shortest interval between two keepalive pings of a client accepted without a strike (gRPC's
    # grpc.http2.min_ping_interval_without_data_ms); a client pinging faster is dropped after 2 strikes.
    min_ping_interval: timedelta = DEFAULT_MIN_PING_INTERVAL
    limits: ListenLimits = ListenLimits()
    # unix only: the public socket's mode (0o600 or 0o660; bound under a tight umask, then chmod'ed),
    # and how many connections it relays at once (signer.local_callers).
    socket_mode: int = DEFAULT_SOCKET_MODE
    max_socket_connections: int = DEFAULT_MAX_SOCKET_CONNECTIONS

    def at_port(self, port: int) -> str:
        """This address with ``port`` (a configured 0 resolved): ``host:port``, an IPv6 host in
        brackets; a unix: address as it is."""
        if self.kind == "unix":
            return self.address
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class TokenConfig:
    module: Path
    label: str | None
    serial: str | None
    pin_file: Path | None
    pin_env: str | None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    max_validity: timedelta = DEFAULT_MAX_VALIDITY
    max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW
    max_cert_ids: int = DEFAULT_MAX_CERT_IDS
    # Most requests in one SignBatch call; the receive limit admits a batch this long of the largest
    # valid requests (signer.service.receive_limit).
    max_batch: int = DEFAULT_MAX_BATCH
    # A responder certificate expiring sooner than this is logged (WARNING) and flagged in metrics.
    expiry_warning: timedelta = DEFAULT_EXPIRY_WARNING
    # Check each status the frontend asks to have signed against the signer's own copy of the CA's
    # status data (the ca.d file's [status] table, loaded by the frontend's code). True: every CA file
    # must have [status] with its files on this host. False: [status] is not read (a compromised
    # frontend can have any status signed). None (not set, "auto"): checked for each CA file whose
    # [status] table names files this host can read.
    verify_status: bool | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    # Unix socket serving the Admin RPCs (ocspctl rotate); None = no admin socket.
    socket: Path | None = None
    # Permissions of that socket: 0o600 (the signer's user) or 0o660 (and its group).
    socket_mode: int = 0o600
    # Verified mTLS client identities (shared.tls form: "cn:ocsp-admin") allowed Admin RPCs on the main
    # listener; empty = none (then only the admin socket).
    allowed_clients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # host:port of a Prometheus text endpoint (/metrics); None = off.
    address: str | None = None


@dataclass(frozen=True, slots=True)
class AuditConfig:
    dir: Path
    key_label: str  # the token key that signs checkpoints
    writer_id: str  # one hash chain per writer (per signer process)
    checkpoint_every: int = 1000
    checkpoint_interval: timedelta = timedelta(seconds=60)
    max_file_bytes: int = 64 << 20
    group_window: timedelta = timedelta(milliseconds=2)
    # Free bytes wanted in ``dir`` (for the signer's user); below it: ERROR, Health not serving, metric
    # (signer.audit_space). Signing goes on until a write actually fails. 0 = not checked.
    min_free: int = DEFAULT_MIN_FREE
    space_check_interval: timedelta = DEFAULT_SPACE_CHECK_INTERVAL


@dataclass(frozen=True, slots=True)
class ResponderConfig:
    """One CA file's view for the signer: the CA and who answers for it."""

    file: Path  # the ca.d/*.toml this came from (for error messages)
    name: str
    ca_cert: bytes  # DER
    cert: bytes  # responder certificate DER (may be the CA certificate itself)
    key_label: str
    responder_id: str  # "key" or "name"
    # True/False as configured; None (not set): include it only for a delegated responder (see
    # signer.responders.include_cert_for).
    include_cert: bool | None
    cert_path: Path | None = None  # where ``cert`` was read from (rotation writes the new one there)
    # The [status] table (shared.status.config), when the signer checks this CA's statuses against it;
    # None when the file has none, policy.verify_status is false, or (auto) its files are not here.
    status: StatusConfig | None = None
    # Auto mode only: why a [status] table present in the file is not used ("status.path: ... cannot
    # be read"), for the start-up warning; None otherwise.
    status_unused: str | None = None


@dataclass(frozen=True, slots=True)
class SignerConfig:
    file: Path
    ca_dir: Path
    listen: ListenConfig
    token: TokenConfig
    policy: PolicyConfig
    responders: tuple[ResponderConfig, ...]
    audit: AuditConfig
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    tls: TlsConfig | None = None  # [tls]: mTLS on the listener; None = plaintext (unix/loopback only)
    # [signer] workers: 1 = this process signs; more = a supervisor and that many worker processes,
    # each with its own token session and audit chain (signer.workers).
    workers: int = 1
    log_format: str = "text"  # [log] format: "text" or "json" (shared.logs)

    def for_worker(self, number: int, port: int | None) -> SignerConfig:
        """What signer worker ``number`` runs with (signer.workers): its own audit chain
        (``worker_writer_id``), the TCP port its supervisor bound (``port``; a configured 0 resolved),
        the admin socket in worker 0 only, and no metrics endpoint (the supervisor serves one for
        all: signer.workers)."""
        listen = self.listen
        if listen.kind == "tcp" and port is not None:
            listen = replace(listen, port=port, address=listen.at_port(port))
        metrics = replace(self.metrics, address=None)
        admin = self.admin if number == 0 else replace(self.admin, socket=None)
        audit = replace(self.audit, writer_id=self.worker_writer_id(number))
        return replace(self, listen=listen, metrics=metrics, admin=admin, audit=audit)

    def worker_writer_id(self, number: int) -> str:
        """The audit writer_id of worker ``number``: ``audit.writer_id`` itself for a single process,
        else ``<writer_id>.w<number>`` (each worker writes its own chain)."""
        return self.audit.writer_id if self.workers == 1 else f"{self.audit.writer_id}.w{number}"

    @property
    def verifies_status(self) -> bool:
        """True when the signer checks statuses against its own data for at least one CA."""
        return any(rc.status is not None for rc in self.responders)


def load_signer_config(path: str | Path) -> SignerConfig:
    """Read and validate signer.toml and every CA file in its ca_dir. Raises ConfigError."""
    sec = Section.load(path, SIGNER_KEYS)
    ca_dir = sec.path("ca_dir")
    listen = _listen(sec.section("listen", required=True))
    token = _token(sec.section("token", required=True))
    policy = _policy(sec.section("policy"))
    admin = _admin(sec.section("admin"))
    metrics = _metrics(sec.section("metrics"))
    audit = _audit(sec.section("audit", required=True))
    tls = load_tls(sec.section("tls")) if sec.has("tls") else None
    workers = _workers(sec.section("signer"), audit)
    log_format = read_format(sec.section("log"))
    sec.finish()
    if not ca_dir.is_dir():
        raise sec.error("ca_dir", f"{ca_dir} is not a directory")
    responders = _responders(sec, ca_dir, policy.verify_status)
    for rc in responders:
        if rc.key_label == audit.key_label:
            raise sec.error("audit.key_label", f"{audit.key_label!r} is also the responder key of CA {rc.name!r} "
                                               f"({rc.file}): the audit key must be a key of its own")
    return SignerConfig(file=sec.file, ca_dir=ca_dir, listen=listen, token=token, policy=policy,
                        responders=responders, audit=audit, admin=admin, metrics=metrics, tls=tls,
                        workers=workers, log_format=log_format)


# -- signer.toml -------------------------------------------------------------------


def parse_listen_address(sec: Section, name: str, value: str) -> ListenConfig:
    if value.startswith("unix:"):
        raw = value[len("unix:"):]
        raw = raw.removeprefix("//")  # unix:///abs/path, the gRPC URI form
        if not raw:
            raise sec.error(name, "unix: needs a socket path")
        p = Path(raw)
        if not p.is_absolute():
            p = sec.file.parent / p
        p = p.resolve()
        if not p.parent.is_dir():
            raise sec.error(name, f"directory {p.parent} of the socket does not exist")
        return ListenConfig(address=f"unix:{p}", kind="unix", path=p)
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise sec.error(name, f"{value!r} is neither host:port nor unix:/path")
    if host.startswith("["):
        if not host.endswith("]"):
            raise sec.error(name, f"{value!r}: unbalanced [ ] around an IPv6 address")
        host = host[1:-1]
    elif ":" in host:
        raise sec.error(name, f"{value!r}: write IPv6 addresses as [addr]:port")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise sec.error(name, f"{value!r}: port must be a number 0..65535")
    port = int(port_text)
    shown = f"[{host}]" if ":" in host else host
    return ListenConfig(address=f"{shown}:{port}", kind="tcp", host=host, port=port)


def _listen(sec: Section) -> ListenConfig:
    listen = parse_listen_address(sec, "address", sec.str("address"))
    interval = sec.duration("min_ping_interval", DEFAULT_MIN_PING_INTERVAL, minimum=timedelta(seconds=1),
                            maximum=timedelta(hours=2))
    listen = replace(listen, min_ping_interval=interval, limits=_listen_limits(sec))
    if listen.kind != "unix":
        for key in ("socket_mode", "max_socket_connections"):
            if sec.has(key):
                raise sec.error(key, f"applies to a unix: address only, and address is {listen.address}")
        return listen
    assert listen.path is not None
    longest = longest_private_path(listen.path)
    if longest > MAX_PATH_BYTES:
        raise sec.error("address", f"{listen.path} is too long: the signer's private sockets beside it "
                                   f"({private_dir_for(listen.path)}/...) would need {longest} bytes, and a "
                                   f"unix socket path may have {MAX_PATH_BYTES}")
    mode = SOCKET_MODES[sec.choice("socket_mode", tuple(SOCKET_MODES), "0660")]
    most = sec.int("max_socket_connections", DEFAULT_MAX_SOCKET_CONNECTIONS, minimum=1,
                   maximum=MAX_SOCKET_CONNECTIONS_LIMIT)
    return replace(listen, socket_mode=mode, max_socket_connections=most)


def _listen_limits(sec: Section) -> ListenLimits:
    d = ListenLimits()
    age = sec.duration("max_connection_age", d.max_connection_age, minimum=timedelta(seconds=1),
                       maximum=timedelta(days=7))
    grace = sec.duration("max_connection_age_grace", d.max_connection_age_grace, minimum=timedelta(seconds=1),
                         maximum=timedelta(hours=1))
    return ListenLimits(
        max_concurrent_rpcs=sec.int("max_concurrent_rpcs", d.max_concurrent_rpcs, minimum=1, maximum=100_000),
        max_watchers=sec.int("max_watchers", d.max_watchers, minimum=1, maximum=100_000),
        max_concurrent_streams=sec.int("max_concurrent_streams", d.max_concurrent_streams, minimum=1,
                                       maximum=100_000),
        max_connections=sec.int("max_connections", d.max_connections, minimum=1, maximum=100_000),
        max_signatures_in_flight=sec.int("max_signatures_in_flight", d.max_signatures_in_flight, minimum=1,
                                         maximum=1_000_000),
        max_connection_age=age,
        max_connection_age_grace=grace,
    )


def _token(sec: Section) -> TokenConfig:
    if sec.has("pin"):
        raise sec.error("pin", "the PIN never goes in config text; use pin_file or pin_env")
    module = sec.path("module")
    if not module.is_file():
        raise sec.error("module", f"PKCS#11 module {module} does not exist")
    label = sec.str("label", None)
    serial = sec.str("serial", None)
    if (label is None) == (serial is None):
        raise sec.error("label", "select the token by exactly one of label / serial")
    pin_file = sec.path("pin_file", None)
    pin_env = sec.str("pin_env", None)
    if (pin_file is None) == (pin_env is None):
        raise sec.error("pin_file", "give exactly one of pin_file / pin_env")
    if pin_file is not None and not pin_file.is_file():
        raise sec.error("pin_file", f"{pin_file} does not exist")
    return TokenConfig(module=module, label=label, serial=serial, pin_file=pin_file, pin_env=pin_env)


def _policy(sec: Section) -> PolicyConfig:
    return PolicyConfig(
        max_validity=sec.duration("max_validity", DEFAULT_MAX_VALIDITY, minimum=timedelta(seconds=1)),
        max_clock_skew=sec.duration("max_clock_skew", DEFAULT_MAX_CLOCK_SKEW, maximum=timedelta(hours=1)),
        max_cert_ids=sec.int("max_cert_ids", DEFAULT_MAX_CERT_IDS, minimum=1, maximum=MAX_CERT_IDS_LIMIT),
        max_batch=sec.int("max_batch", DEFAULT_MAX_BATCH, minimum=1, maximum=MAX_BATCH_LIMIT),
        expiry_warning=sec.duration("expiry_warning", DEFAULT_EXPIRY_WARNING),
        verify_status=sec.bool("verify_status", None),
    )


def _admin(sec: Section) -> AdminConfig:
    sock = sec.path("socket", None)
    if sock is not None and not sock.parent.is_dir():
        raise sec.error("socket", f"directory {sock.parent} of the socket does not exist")
    if sock is not None and len(str(sock).encode()) > MAX_PATH_BYTES:
        raise sec.error("socket", f"{sock} is longer than a unix socket path may be ({MAX_PATH_BYTES} bytes)")
    mode = SOCKET_MODES[sec.choice("socket_mode", tuple(SOCKET_MODES), "0600")]
    from shared.tls import parse_allowed

    allowed: list[str] = []
    for entry in sec.str_list("allowed_clients", []):
        try:
            allowed.append(parse_allowed(entry))
        except ValueError as e:
            raise sec.error("allowed_clients", str(e)) from None
    return AdminConfig(socket=sock, socket_mode=mode, allowed_clients=tuple(allowed))


def _metrics(sec: Section) -> MetricsConfig:
    address = sec.str("address", None)
    if address is not None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise sec.error("address", f"{address!r} is not host:port")
    return MetricsConfig(address=address)


_WRITER_ID = re.compile(r"[A-Za-z0-9._]{1,64}")


def _workers(sec: Section, audit: AuditConfig) -> int:
    workers = sec.int("workers", usable_cpus(MAX_WORKERS), minimum=1, maximum=MAX_WORKERS)
    longest = f"{audit.writer_id}.w{workers - 1}"
    if workers > 1 and not _WRITER_ID.fullmatch(longest):
        raise ConfigError(sec.file, "audit.writer_id", f"{audit.writer_id!r} is too long for {workers} workers: "
                                                       f"worker ids such as {longest!r} must stay within 64 characters")
    return workers


def _audit(sec: Section) -> AuditConfig:
    directory = sec.path("dir")
    if directory.exists() and not directory.is_dir():
        raise sec.error("dir", f"{directory} is not a directory")
    default_writer = re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:64] or "signer"
    writer_id = sec.str("writer_id", default_writer)
    if not _WRITER_ID.fullmatch(writer_id):
        raise sec.error("writer_id", "1 to 64 of A-Z a-z 0-9 . _")
    interval = sec.duration("checkpoint_interval", timedelta(seconds=60), minimum=timedelta(seconds=1),
                            maximum=timedelta(days=1))
    if interval % timedelta(seconds=1):
        raise sec.error("checkpoint_interval", f"must be whole seconds (\"{int(interval.total_seconds())}s\" "
                                               f"or \"{int(interval.total_seconds()) + 1}s\"), not {interval}")
    return AuditConfig(
        dir=directory,
        key_label=sec.str("key_label"),
        writer_id=writer_id,
        checkpoint_every=sec.int("checkpoint_every", 1000, minimum=1, maximum=1_000_000),
        checkpoint_interval=interval,
        max_file_bytes=sec.int("max_file_bytes", 64 << 20, minimum=4096),
        group_window=sec.duration("group_window", timedelta(milliseconds=2),
                                  maximum=timedelta(milliseconds=100)),
        min_free=_size(sec, "min_free", DEFAULT_MIN_FREE),
        space_check_interval=sec.duration("space_check_interval", DEFAULT_SPACE_CHECK_INTERVAL,
                                          minimum=timedelta(milliseconds=100), maximum=timedelta(hours=1)),
    )


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """A size in bytes: an integer, or a string with a binary unit ("512MiB", "1GiB"). Raises ValueError."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return text
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size like \"512MiB\" or \"1GiB\" (binary units B, KiB, MiB, GiB, "
                         "TiB; a plain integer is bytes)")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]


def _size(sec: Section, name: str, default: int) -> int:
    if not sec.has(name):
        sec.ignore(name)
        return default
    value = sec.data[name]
    sec.ignore(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise sec.error(name, f"must be a size like \"512MiB\" or \"1GiB\", not {value!r}")
    try:
        return parse_size(value)
    except ValueError as e:
        raise sec.error(name, str(e)) from None


# -- ca.d/*.toml -----------------------------------------------------------------


def _responders(top: Section, ca_dir: Path, verify_status: bool | None) -> tuple[ResponderConfig, ...]:
    files = sorted(p for p in ca_dir.glob("*.toml") if p.is_file())
    if not files:
        raise top.error("ca_dir", f"no *.toml CA files in {ca_dir}")
    out: list[ResponderConfig] = []
    names: dict[str, Path] = {}
    issuers: dict[tuple[bytes, bytes], Path] = {}
    for f in files:
        rc = _ca_file(f, verify_status)
        if rc.name in names:
            raise ConfigError(f, "name", f"CA name {rc.name!r} is also used by {names[rc.name]}")
        names[rc.name] = f
        ca = x509.load_der_x509_certificate(rc.ca_cert)
        ident = (ca.subject.public_bytes(), _spki(ca))
        if ident in issuers:
            raise ConfigError(f, "ca_cert",
                              f"the same CA (subject and key) is configured in {issuers[ident]}")
        issuers[ident] = f
        out.append(rc)
    return tuple(out)


def _ca_file(path: Path, verify_status: bool | None = None) -> ResponderConfig:
    sec = Section.load(path, CA_FILE_KEYS)
    name = sec.str("name", path.stem)
    _, ca = read_certificate(sec, "ca_cert")
    status, unused = _status(sec, verify_status)
    rsec = sec.section("responder", required=True)
    cert_path, cert = read_certificate(rsec, "cert")
    key_label = rsec.str("key_label")
    responder_id = rsec.choice("responder_id", ("key", "name"), "key")
    include_cert = rsec.bool("include_cert", None)
    sec.finish()
    check_responder_cert(rsec, "cert", ca, cert)
    return ResponderConfig(
        file=path, name=name, ca_cert=ca.public_bytes(_DER), cert=cert.public_bytes(_DER),
        key_label=key_label, responder_id=responder_id, include_cert=include_cert, cert_path=cert_path,
        status=status, status_unused=unused)


def _status(sec: Section, verify_status: bool | None) -> tuple[StatusConfig | None, str | None]:
    """The CA file's [status] table as the signer uses it: (config or None, why a present table is
    not used). Read with the frontend's parser, so both halves accept and reject the same tables."""
    if verify_status is False:
        sec.ignore("status")  # switched off: the frontend's table only
        return None, None
    if not sec.has("status"):
        if verify_status:
            raise sec.error("status", "missing: signer.toml sets policy.verify_status = true, which needs "
                                      "every CA file to have a [status] table (the status data to check "
                                      "against, as the frontend reads it)")
        return None, None
    status = read_status_config(sec.section("status"), files_must_exist=bool(verify_status))
    missing = missing_files(status)
    if not missing:
        return status, None
    key, p = missing[0]
    if verify_status:
        raise sec.error(f"status.{key}", f"{p} cannot be read (policy.verify_status = true needs this "
                                         "host's own copy of the status data)")
    return None, f"status.{key}: {p} cannot be read on this host"


_DER = Encoding.DER


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def check_responder_cert(sec: Section, name: str, ca: x509.Certificate, cert: x509.Certificate) -> None:
    """The responder is the CA itself, or a delegate issued directly by it with id-kp-OCSPSigning."""
    if cert == ca:
        return
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        why = str(e) or "the CA's signature does not verify"
        raise sec.error(name, f"the responder certificate is not issued by this CA ({why})") from None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    except ValueError as e:
        raise sec.error(name, f"cannot read the responder certificate's extensions: {e}") from None
    if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise sec.error(name, "a delegated responder certificate must carry extendedKeyUsage "
                              "id-kp-OCSPSigning")
