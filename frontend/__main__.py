"""ocsp-frontend --config FILE [--check]: wiring only.

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a passing --check; 2 for a configuration
or status-data fault found at start-up, printed as ``ocsp-frontend: <file>: <key>: <message>``.
SIGHUP re-reads every CA's status data (a bad new file keeps the last good data).
With ``listen.workers`` above 1 this process loads and checks the same, then supervises that many
workers (frontend.workers), each running ``serve``; 1 if it gives up on them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from frontend.access_log import AccessLog, check_file
from frontend.answer_store import open_store
from frontend.app import CaEntry, OcspApp
from frontend.cache import ResponseCache
from frontend.config import FrontendConfig, load_frontend_config
from frontend.http_answer import static_headers
from frontend.http_app import FrontendServer
from frontend.metrics import FrontendMetrics, Snapshots, bind_metrics
from frontend.readiness import Readiness
from frontend.refresher import make_refresher
from frontend.request_ids import RequestIds
from frontend.sign_limit import BoundedSigner
from frontend.signer_client import Keepalive, SignerClient, keepalive_warning
from frontend.watch import ResponderWatch
from frontend.workers import bind_slots, supervise
from shared import logs
from shared.config import ConfigError
from shared.fdlimit import log_open_files_limit, raise_open_files_limit
from shared.metrics_http import keep_snapshot, start_endpoint
from shared.ocsp.certid import IssuerIndex, issuer_keys
from shared.status.base import StatusDataError
from shared.status.config import make_source
from shared.tasks import cancel_all
from shared.version import version_text

log = logging.getLogger("frontend")


def load_cas(cfg: FrontendConfig) -> IssuerIndex[CaEntry]:
    """Build every CA's status source and load its data once; faults are ConfigErrors."""
    index: IssuerIndex[CaEntry] = IssuerIndex()
    for ca in cfg.cas:
        source = make_source(ca.name, ca.ca_cert_der, ca.status)
        try:
            source.load_now()
        except StatusDataError as e:
            raise ConfigError(ca.file, source.config_key, str(e)) from None
        try:
            index.add(ca.ca_cert_der, CaEntry(ca.name, source, tuple(issuer_keys(ca.ca_cert_der).values())))
        except ValueError as e:
            raise ConfigError(ca.file, "ca_cert", f"{e} (another CA file names the same issuer)") from None
    return index


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(cfg: FrontendConfig, issuers: IssuerIndex[CaEntry], *, sockets: Sequence[socket.socket] = (),
                ready: Callable[[], None] | None = None, metrics_socket: socket.socket | None = None,
                snapshots: Snapshots | None = None, number: int = 0) -> None:
    """Serve until SIGTERM/SIGINT: on ``listen.host``/``port``, or, in a worker, on the supervisor's
    ``sockets`` (then ``ready()`` once listening). ``metrics_socket``: the bound ``[metrics] address``;
    ``snapshots``: the workers' shared metrics (worker ``number``), None in a single process."""
    loop = asyncio.get_running_loop()
    ids = RequestIds()  # this process's (a worker's own prefix): SignRequest ids and the access log's
    signer = SignerClient(cfg.signer.addresses, cfg.signer.timeout, tls=cfg.signer.tls,
                          keepalive=Keepalive(cfg.signer.keepalive, cfg.signer.keepalive_timeout),
                          max_batch=cfg.signer.max_batch, connections=cfg.signer.connections, ids=ids)
    warning = keepalive_warning(cfg.signer.keepalive)
    if warning:
        log.warning("%s: %s", cfg.file, warning)
    if cfg.signer.tls is None:
        log.warning("gRPC to the signer (%s) is plaintext: no tls_ca/tls_cert/tls_key in [signer]",
                    ", ".join(cfg.signer.addresses))
    else:
        log.info("gRPC to the signer (%s) over mTLS: signer CA %s, client certificate %s",
                 ", ".join(cfg.signer.addresses), cfg.signer.tls.ca, cfg.signer.tls.cert)
    cache = ResponseCache(cfg.cache.max_entries, cfg.cache.max_age.total_seconds(),
                          rotation_grace=cfg.cache.rotation_grace.total_seconds(),
                          max_bytes=cfg.cache.max_bytes, max_key_bytes=cfg.cache.max_key_bytes)
    responder_watch = ResponderWatch(signer.channels(), cache, [(ca.name, ca.ca_cert_der) for ca in cfg.cas])
    responder_watch.start()
    sources = [ca.source for ca in issuers.values()]
    readiness = Readiness(signer.health, sources, interval=cfg.signer.health_interval, timeout=cfg.signer.timeout)
    readiness.start()
    bounded = BoundedSigner(signer, cfg.signer.max_in_flight)  # tryLater at once past the bound
    store_config = cfg.cache.store_config()
    store = open_store(store_config) if store_config is not None else None
    if store is not None:
        log.info("sharing answers through Redis %s (keys %r, calls bounded by %.0f ms)", store.name,
                 store.prefix, store.timeout * 1000)
    app = OcspApp(issuers=issuers, signer=bounded, cache=cache, listen=cfg.listen,
                  stored_headers=static_headers, store=store)
    access = AccessLog(ids, path=cfg.log.access_file) if cfg.log.access else None
    server = FrontendServer(app, cfg.listen, readiness, access)
    if sockets:  # a worker, perhaps one started long after the supervisor loaded the data
        await asyncio.gather(*(s.refresh() for s in sources), return_exceptions=True)
    host, port = await server.start(socks=sockets)
    log.info("listening on %s", _url(host, port))
    log_open_files_limit(log)
    metrics = FrontendMetrics(server, signer, bounded, sources)
    metrics_server, snapshot_task = None, None
    if metrics_socket is not None:
        if snapshots is None:
            metrics_server = await start_endpoint(metrics.render, sock=metrics_socket)
        else:
            shared = snapshots
            metrics_server = await start_endpoint(lambda: shared.scrape(number, metrics.render), sock=metrics_socket)
            snapshot_task = loop.create_task(keep_snapshot(shared.directory, number, metrics.render))
        if number <= 1:  # the single process, or worker 1 for all of them
            log.info("metrics on http://%s/metrics", cfg.metrics.address)

    watchers = [loop.create_task(s.watch(), name=f"watch-{s.name}") for s in sources]
    refresher = make_refresher(cfg, signer, {ca.name: ca.source for ca in issuers.values()})
    if refresher is not None:  # one frontend of the fleet refreshes each CA: the one holding its lock
        responder_watch.listeners.append(refresher.note_responder)
        refresher.start()
    stop = asyncio.Event()

    async def reload_all() -> None:
        log.info("SIGHUP: re-reading status data")
        if access is not None:
            access.reopen()  # log rotation: the access file anew
        await asyncio.gather(*(s.refresh(force=True) for s in sources), return_exceptions=True)

    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        t = loop.create_task(reload_all())
        reloads.add(t)
        t.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if ready is not None:
        ready()  # now, not before: a SIGHUP passed on from here on must find its handler
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        if metrics_server is not None:
            metrics_server.close()
        await server.stop()
        if access is not None:
            access.close()
        if refresher is not None:
            await refresher.stop()
        await cancel_all([*watchers, *reloads, *([snapshot_task] if snapshot_task is not None else [])])
        await responder_watch.stop()
        await readiness.stop()
        await app.close()
        if store is not None:
            await store.close()
        await signer.close()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    # SIGHUP means "re-read the status data", but its handler exists only once serving; until then
    # (loading large CRLs can take a while) the default action would kill the process.
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    except ValueError:  # not the main thread (an embedding test): nothing to protect
        pass
    parser = argparse.ArgumentParser(prog="ocsp-frontend", description="Keyless OCSP HTTP frontend")
    parser.add_argument("--version", action="version", version=version_text("ocsp-frontend"))
    parser.add_argument("--config", required=True, help="frontend.toml")
    parser.add_argument("--check", action="store_true", help="validate config and status data, then exit")
    parser.add_argument("--log-level", default="INFO", choices=logs.LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO (default), WARNING or ERROR: the least severe log lines written "
                        "(by the workers too)")
    args = parser.parse_args(argv)
    logs.setup("ocsp-frontend", args.log_level)  # names and paths from outside cannot forge log lines
    try:
        cfg = load_frontend_config(args.config)
        logs.set_format(cfg.log.format)
        if cfg.log.access and cfg.log.access_file is not None:
            fault = check_file(cfg.log.access_file)
            if fault:
                raise ConfigError(cfg.file, "log.access_file", fault)
        issuers = load_cas(cfg)
    except ConfigError as e:
        print(f"ocsp-frontend: {e}", file=sys.stderr, flush=True)
        return 2
    if args.check:
        warning = keepalive_warning(cfg.signer.keepalive)
        if warning:
            print(f"ocsp-frontend: {args.config}: warning: {warning}", file=sys.stderr, flush=True)
        names = ", ".join(ca.name for ca in cfg.cas)
        print(f"ocsp-frontend: {args.config}: OK ({len(cfg.cas)} CAs: {names})", flush=True)
        return 0

    raise_open_files_limit()  # (workers inherit it; each logs it once listening)
    import uvloop

    metrics_socket = None
    if cfg.metrics.address is not None:
        try:
            metrics_socket = bind_metrics(cfg.metrics.address)
        except OSError as e:
            print(f"ocsp-frontend: {args.config}: metrics.address: cannot listen on {cfg.metrics.address}: "
                  f"{e.strerror or e}", file=sys.stderr, flush=True)
            return 2
    snapshots = Snapshots.create() if metrics_socket is not None and cfg.listen.workers > 1 \
        else None

    def worker(number: int, sockets: Sequence[socket.socket], ready: Callable[[], None]) -> int:
        try:
            uvloop.run(serve(cfg, issuers, sockets=sockets, ready=ready, metrics_socket=metrics_socket,
                             snapshots=snapshots, number=number))
        except KeyboardInterrupt:
            pass
        return 0

    def cannot_listen(e: OSError) -> int:
        print(f"ocsp-frontend: {args.config}: listen: cannot listen on {cfg.listen.host}:{cfg.listen.port}: "
              f"{e.strerror or e}", file=sys.stderr, flush=True)
        return 2

    if cfg.listen.workers > 1:
        supervisor = os.getpid()  # a forked worker returns through here too: only this one cleans up
        try:
            groups = bind_slots(cfg.listen.host, cfg.listen.port, cfg.listen.workers)
        except OSError as e:
            return cannot_listen(e)
        try:
            return supervise(cfg.listen, groups, worker)
        finally:
            if snapshots is not None and os.getpid() == supervisor:
                snapshots.remove()
    try:
        uvloop.run(serve(cfg, issuers, metrics_socket=metrics_socket))
    except OSError as e:
        return cannot_listen(e)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
