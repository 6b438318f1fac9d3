"""frontend.toml and the frontend's part of each ca.d/*.toml, validated before anything starts.

Every fault is a ``ConfigError(file, key, message)``. The ``[responder]`` table of a CA file is the
signer's and is not read here, but its key names are checked (shared.ca_keys), so a typo there is
reported by either half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from frontend.answer_store import DEFAULT_PREFIX, DEFAULT_TIMEOUT, StoreConfig, check_url
from frontend.tls import TLS_KEYS, SignerTls, load_signer_tls
from shared.ca_keys import CA_FILE_KEYS
from shared.config import ConfigError, Keys, Section, read_certificate
from shared.cpus import usable_cpus
from shared.logs import read_format
from shared.ocsp.types import HashAlgorithm
from shared.status.config import StatusConfig, read_status_config

_HASH_NAMES = {"sha1": HashAlgorithm.SHA1, "sha256": HashAlgorithm.SHA256,
               "sha384": HashAlgorithm.SHA384, "sha512": HashAlgorithm.SHA512}

MAX_WORKERS = 256
# [signer] connections when not given. The signer runs one worker process per core of its host by
# default, all behind one listen address, and the kernel hands each worker whole connections, not
# calls: the number that keeps every worker busy is the signer's worker count, which the frontend
# cannot know. 2 already lets two batches be signed at once; an operator sets it to the signer's
# workers (a frontend with several listen.workers opens this many per worker).
DEFAULT_CONNECTIONS = 2
MAX_CONNECTIONS = 64
DEFAULT_REFRESH_RATE = 100  # [cache] refresh_rate: signatures a second

# Every key of frontend.toml (shared.config.Section.load checks the file against them). A key read
# below must be declared here.
FRONTEND_KEYS: Keys = {
    "ca_dir": None,
    "listen": dict.fromkeys((
        "host", "port", "path_prefix", "max_request_bytes", "max_header_bytes", "max_cert_ids",
        "allowed_hashes", "idle_timeout", "request_timeout", "shutdown_grace", "max_connections",
        "max_connections_per_client", "max_inflight_per_client", "workers")),
    "signer": dict.fromkeys((
        "address", "addresses", *TLS_KEYS, "server_name", "timeout", "keepalive", "keepalive_timeout",
        "health_interval", "max_in_flight", "max_batch", "connections")),
    "cache": dict.fromkeys((
        "redis", "redis_prefix", "redis_timeout", "max_age", "refresh_before", "refresh_rate",
        "max_entries", "max_bytes", "max_key_bytes", "rotation_grace")),
    "log": dict.fromkeys(("format", "access", "access_file")),
    "metrics": dict.fromkeys(("address",)),
}


def default_workers() -> int:
    """listen.workers when not given: one per CPU this process may run on (shared.cpus), at most
    MAX_WORKERS."""
    return usable_cpus(MAX_WORKERS)


@dataclass(frozen=True, slots=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 2560
    # Requests are served under this prefix ("/ocsp/" when a proxy forwards /ocsp/... unchanged).
    path_prefix: str = "/"
    # Largest POST body / decoded GET request accepted; larger POSTs get 413. Real requests are
    # a few hundred bytes; RFC 5019-style clients stay far below 10000.
    max_request_bytes: int = 10000
    # Largest request line + headers; larger gets 431 and the connection closed.
    max_header_bytes: int = 8192
    # Most CertIDs in one request (each costs a status lookup, a SingleResponse to sign and its
    # share of the audit record). Clients send one; keep it at or below the signer's max_cert_ids.
    max_cert_ids: int = 8
    # CertID hash algorithms served; others get "unauthorized".
    allowed_hashes: tuple[HashAlgorithm, ...] = tuple(HashAlgorithm)
    # A keep-alive connection with no request in progress is closed after this long.
    idle_timeout: float = 30.0
    # A request must arrive completely (headers and body) within this long of its first byte.
    request_timeout: float = 10.0
    # On SIGTERM, in-flight requests get this long to finish.
    shutdown_grace: float = 5.0
    # Open client connections; one more is answered 503 and closed. Each is a file descriptor.
    max_connections: int = 4096
    # Open connections from one client address (IPv4 address, IPv6 /64); 0 = no per-client limit.
    # Behind a proxy or load balancer every client shares the proxy's addresses.
    max_connections_per_client: int = 512
    # Answers being worked on (cache misses: status lookup and signature) at once for one client
    # address, across its connections; more wait for a slot. 0 = no per-client limit.
    max_inflight_per_client: int = 64
    # Processes serving HTTP (frontend.workers): 1 = this process alone; more = a supervisor and that
    # many workers, each with its own event loop, cache and signer channels, sharing the port through
    # SO_REUSEPORT. The limits above are each worker's own.
    workers: int = field(default_factory=default_workers)


@dataclass(frozen=True, slots=True)
class SignerClientConfig:
    # One or more signer addresses (host:port or unix:/path); with several, calls are spread
    # over them and a call that finds one unavailable is retried on the next.
    addresses: tuple[str, ...] = ("127.0.0.1:50051",)
    # Deadline of one Sign call. An RSA-2048 signature in SoftHSM takes about 1 ms; the
    # deadline covers queueing in a busy signer. Past it the client gets tryLater.
    timeout: float = 2.0
    # mTLS (frontend.tls): the signer's CA, our client certificate and key; None = plaintext, which
    # only a unix socket or loopback address may use.
    tls: SignerTls | None = None
    # An HTTP/2 ping on each signer connection this often (also while idle), so a connection that died
    # quietly is noticed and replaced before a Sign meets it. Must not be shorter than the signer's
    # listen.min_ping_interval (default 10 s), which drops clients pinging faster ("too_many_pings").
    keepalive: float = 30.0
    # A ping unanswered this long closes the connection (its calls fail; a Sign is retried once).
    keepalive_timeout: float = 10.0
    # How often each signer's Health RPC is asked, for /-/ready.
    health_interval: float = 2.0
    # Most signatures in flight at once for this frontend process (frontend.sign_limit): past it a
    # request that needs one is answered tryLater at once rather than waiting out the timeout.
    max_in_flight: int = 256
    # Most requests in one SignBatch call (frontend.signer_client): whatever waits while a call is in
    # flight joins the next one, up to this many. A signer with a lower [policy] max_batch says so and
    # gets shorter batches; 1 sends one request per call.
    max_batch: int = 64
    # Connections to each signer address (frontend.signer_client's lanes): a SignBatch goes out on the
    # one with the fewest calls in flight, so up to this many are in flight per address at once. A
    # signer with several workers on one address spreads connections over them (not calls): set it to
    # the signer's worker count (DEFAULT_CONNECTIONS above says why the default is 2).
    connections: int = DEFAULT_CONNECTIONS


@dataclass(frozen=True, slots=True)
class CacheConfig:
    # Signed responses kept for nonce-less requests (about 2-3 KB each). 0 disables the cache.
    max_entries: int = 10000
    # Bytes the cache may hold (responses, header lines, keys, bookkeeping); past it, and past
    # max_entries, the least recently used answers go.
    max_bytes: int = 64 << 20
    # Requests (DER) longer than this are answered but not cached; one CertID is 70-250 bytes.
    max_key_bytes: int = 1024
    # An entry lives until min(nextUpdate, time of caching + max_age); also caps HTTP max-age.
    max_age: timedelta = timedelta(hours=1)
    # After the signer replaces a CA's responder (rotation), cached answers signed by the old one are
    # still served this long, then dropped; 0 = at once. A few seconds spreads the re-signing load.
    rotation_grace: timedelta = timedelta(seconds=2)
    # The fleet's shared answer store (frontend.answer_store): redis://[user:password@]host:port/db,
    # rediss://... (TLS; ssl_ca_certs=... and the other redis-py URL options in the query), or
    # unix:///run/redis/redis.sock. None: answers are shared by nobody (only this process's cache).
    redis: str | None = None
    # Prefix of every key the fleet writes; frontends sharing answers use the same one.
    redis_prefix: str = DEFAULT_PREFIX
    # Longest a Redis call may take (connecting included); past it the answer goes on without Redis.
    redis_timeout: float = DEFAULT_TIMEOUT
    # The refresher (frontend.refresher; with redis only): stored answers are signed again this long
    # before they expire (min(nextUpdate, thisUpdate + max_age)), by one frontend of the fleet at a time
    # (a Redis lock per CA). None: a quarter of max_age; 0: no refresher in this frontend.
    refresh_before: timedelta | None = None
    # Most signatures a second the refresher asks for (all CAs together), so the live path keeps its pace.
    refresh_rate: int = DEFAULT_REFRESH_RATE

    def refresh_window(self) -> float:
        """refresh_before in seconds (its default resolved); 0: no refresher."""
        if self.refresh_before is None:
            return self.max_age.total_seconds() / 4
        return self.refresh_before.total_seconds()

    def store_config(self) -> StoreConfig | None:
        if self.redis is None:
            return None
        return StoreConfig(self.redis, prefix=self.redis_prefix, timeout=self.redis_timeout)


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: the line format of every log line, and the access log (frontend.access_log)."""

    format: str = "text"  # "text" or "json" (shared.logs)
    access: bool = True  # one line per answered OCSP request
    access_file: Path | None = None  # None: the access lines go where the log goes (stderr)


@dataclass(frozen=True, slots=True)
class CaConfig:
    name: str
    file: Path
    ca_cert_path: Path
    ca_cert_der: bytes
    status: StatusConfig


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # host:port of the Prometheus endpoint (GET /metrics), a listener of its own; None = off.
    address: str | None = None


@dataclass(frozen=True, slots=True)
class FrontendConfig:
    file: Path
    ca_dir: Path
    listen: ListenConfig
    signer: SignerClientConfig
    cache: CacheConfig
    cas: tuple[CaConfig, ...]
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()


def _seconds(d: timedelta) -> float:
    return d.total_seconds()


def _listen(sec: Section) -> ListenConfig:
    d = ListenConfig()
    host = sec.str("host", d.host)
    port = sec.int("port", d.port, minimum=0, maximum=65535)
    prefix = sec.str("path_prefix", d.path_prefix)
    if not prefix.startswith("/"):
        raise sec.error("path_prefix", f"must start with '/', not {prefix!r}")
    if "?" in prefix or "#" in prefix or "%" in prefix:
        raise sec.error("path_prefix", "must be a plain path (no '?', '#' or '%')")
    if not prefix.endswith("/"):
        prefix += "/"
    if prefix.startswith("/-/"):
        raise sec.error("path_prefix", "'/-/' is reserved for the responder's own endpoints")
    max_request = sec.int("max_request_bytes", d.max_request_bytes, minimum=100, maximum=1_000_000)
    max_header = sec.int("max_header_bytes", d.max_header_bytes, minimum=1024, maximum=1_000_000)
    max_ids = sec.int("max_cert_ids", d.max_cert_ids, minimum=1, maximum=1000)
    names = sec.str_list("allowed_hashes", None)
    hashes = d.allowed_hashes
    if names is not None:
        if not names:
            raise sec.error("allowed_hashes", "must name at least one of sha1, sha256, sha384, sha512")
        picked = []
        for n in names:
            alg = _HASH_NAMES.get(n.lower().replace("-", ""))
            if alg is None:
                raise sec.error("allowed_hashes", f"{n!r} is not one of sha1, sha256, sha384, sha512")
            if alg not in picked:
                picked.append(alg)
        hashes = tuple(picked)
    idle = sec.duration("idle_timeout", timedelta(seconds=d.idle_timeout), minimum=timedelta(seconds=1))
    req = sec.duration("request_timeout", timedelta(seconds=d.request_timeout), minimum=timedelta(seconds=1))
    grace = sec.duration("shutdown_grace", timedelta(seconds=d.shutdown_grace))
    max_conns = sec.int("max_connections", d.max_connections, minimum=1, maximum=1_000_000)
    per_client = sec.int("max_connections_per_client", d.max_connections_per_client, minimum=0,
                         maximum=1_000_000)
    inflight = sec.int("max_inflight_per_client", d.max_inflight_per_client, minimum=0, maximum=1_000_000)
    workers = sec.int("workers", d.workers, minimum=1, maximum=MAX_WORKERS)
    return ListenConfig(host=host, port=port, path_prefix=prefix, max_request_bytes=max_request,
                        max_header_bytes=max_header, max_cert_ids=max_ids, allowed_hashes=hashes,
                        idle_timeout=_seconds(idle), request_timeout=_seconds(req),
                        shutdown_grace=_seconds(grace), max_connections=max_conns,
                        max_connections_per_client=per_client, max_inflight_per_client=inflight,
                        workers=workers)


def _check_address(sec: Section, key: str, address: str) -> None:
    if address.startswith("unix:"):
        if len(address) <= len("unix:"):
            raise sec.error(key, "unix: needs a socket path (unix:/run/ocsp/signer.sock)")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise sec.error(key, f"{address!r} is not host:port or unix:/path")


def _signer(sec: Section) -> SignerClientConfig:
    d = SignerClientConfig()
    if sec.has("address") and sec.has("addresses"):
        raise sec.error("addresses", "give either address or addresses, not both")
    if sec.has("addresses"):
        addresses = sec.str_list("addresses")
        if not addresses:
            raise sec.error("addresses", "must name at least one signer")
        for a in addresses:
            _check_address(sec, "addresses", a)
        addrs = tuple(addresses)
    else:
        a = sec.str("address", d.addresses[0])
        _check_address(sec, "address", a)
        addrs = (a,)
    tls = load_signer_tls(sec, addrs, "addresses" if sec.has("addresses") else "address")
    timeout = sec.duration("timeout", timedelta(seconds=d.timeout), minimum=timedelta(milliseconds=10),
                           maximum=timedelta(minutes=5))
    # gRPC sends at most one ping a second, whatever is asked.
    keepalive = sec.duration("keepalive", timedelta(seconds=d.keepalive), minimum=timedelta(seconds=1),
                             maximum=timedelta(hours=2))
    keepalive_timeout = sec.duration("keepalive_timeout", timedelta(seconds=d.keepalive_timeout),
                                     minimum=timedelta(milliseconds=100), maximum=timedelta(minutes=5))
    health_interval = sec.duration("health_interval", timedelta(seconds=d.health_interval),
                                   minimum=timedelta(milliseconds=100), maximum=timedelta(hours=1))
    max_in_flight = sec.int("max_in_flight", d.max_in_flight, minimum=1, maximum=100_000)
    max_batch = sec.int("max_batch", d.max_batch, minimum=1, maximum=1024)
    connections = sec.int("connections", d.connections, minimum=1, maximum=MAX_CONNECTIONS)
    return SignerClientConfig(addresses=addrs, timeout=_seconds(timeout), tls=tls, keepalive=_seconds(keepalive),
                              keepalive_timeout=_seconds(keepalive_timeout),
                              health_interval=_seconds(health_interval), max_in_flight=max_in_flight,
                              max_batch=max_batch, connections=connections)


def _metrics(sec: Section, listen: ListenConfig) -> MetricsConfig:
    address = sec.str("address", None)
    if address is None:
        return MetricsConfig()
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise sec.error("address", f"{address!r} is not host:port (127.0.0.1:9102, [::1]:9102)")
    if int(port) == listen.port:
        raise sec.error("address", f"port {port} is [listen] port: metrics get a listener of their own")
    return MetricsConfig(address=address)


def _cache(sec: Section) -> CacheConfig:
    d = CacheConfig()
    url = sec.str("redis", None)
    if url is not None:
        fault = check_url(url)
        if fault is not None:
            raise sec.error("redis", f"not a Redis URL (redis://host:6379/0, rediss://..., unix:///path): {fault}")
    prefix = sec.str("redis_prefix", d.redis_prefix, nonempty=False)
    if len(prefix) > 100 or any(c.isspace() for c in prefix):
        raise sec.error("redis_prefix", "must be at most 100 characters, none of them white space")
    timeout = sec.duration("redis_timeout", timedelta(seconds=d.redis_timeout), minimum=timedelta(milliseconds=1),
                           maximum=timedelta(seconds=10))
    max_age = sec.duration("max_age", d.max_age, minimum=timedelta(seconds=1))
    refresh_before = sec.duration("refresh_before", None)
    if refresh_before is not None and refresh_before >= max_age:
        raise sec.error("refresh_before", f"must be shorter than max_age ({max_age}): every stored answer "
                        "would be due again as soon as it is signed (0: no refresher)")
    refresh_rate = sec.int("refresh_rate", d.refresh_rate, minimum=1, maximum=1_000_000)
    return CacheConfig(
        redis=url, redis_prefix=prefix, redis_timeout=_seconds(timeout),
        max_entries=sec.int("max_entries", d.max_entries, minimum=0, maximum=10_000_000),
        max_bytes=sec.int("max_bytes", d.max_bytes, minimum=0, maximum=1 << 40),
        max_key_bytes=sec.int("max_key_bytes", d.max_key_bytes, minimum=64, maximum=1_000_000),
        max_age=max_age,
        rotation_grace=sec.duration("rotation_grace", d.rotation_grace, maximum=timedelta(hours=1)),
        refresh_before=refresh_before, refresh_rate=refresh_rate,
    )


def _log(sec: Section) -> LogConfig:
    fmt = read_format(sec)
    access = sec.bool("access", LogConfig().access)
    access_file = sec.path("access_file", None)
    if access_file is not None and access_file.is_dir():
        raise sec.error("access_file", f"{access_file} is a directory; give the access log's file")
    return LogConfig(format=fmt, access=access, access_file=access_file)


def load_ca_file(path: Path) -> CaConfig:
    sec = Section.load(path, CA_FILE_KEYS)
    name = sec.str("name", path.stem)
    ca_path, ca_cert = read_certificate(sec, "ca_cert")
    der = ca_cert.public_bytes(Encoding.DER)
    sec.ignore("responder")
    status = read_status_config(sec.section("status", required=True))
    sec.finish()
    return CaConfig(name=name, file=path, ca_cert_path=ca_path, ca_cert_der=der, status=status)


def load_frontend_config(path: str | Path) -> FrontendConfig:
    file = Path(path)
    sec = Section.load(file, FRONTEND_KEYS)
    ca_dir = sec.path("ca_dir")
    if not ca_dir.is_dir():
        raise sec.error("ca_dir", f"{ca_dir} is not a directory")
    listen = _listen(sec.section("listen"))
    signer = _signer(sec.section("signer"))
    cache = _cache(sec.section("cache"))
    log = _log(sec.section("log"))
    metrics = _metrics(sec.section("metrics"), listen)
    sec.finish()

    cas: list[CaConfig] = []
    names: dict[str, Path] = {}
    certs: dict[bytes, Path] = {}
    for ca_file in sorted(ca_dir.glob("*.toml")):
        ca = load_ca_file(ca_file)
        if ca.name in names:
            raise ConfigError(ca_file, "name", f"{ca.name!r} is also the name of {names[ca.name]}")
        if ca.ca_cert_der in certs:
            raise ConfigError(ca_file, "ca_cert",
                              f"the same CA certificate is configured in {certs[ca.ca_cert_der]}")
        names[ca.name] = ca_file
        certs[ca.ca_cert_der] = ca_file
        cas.append(ca)
    if not cas:
        raise ConfigError(file, "ca_dir", f"no *.toml CA files in {ca_dir}")
    return FrontendConfig(file=file, ca_dir=ca_dir, listen=listen, signer=signer, cache=cache, cas=tuple(cas),
                          log=log, metrics=metrics)
