"""ocsp-signer --config FILE [--check]: wiring only.

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a passing --check; 2 for a configuration
problem (printed as ``ocsp-signer: <file>: <key>: <message>``, before anything starts); 1 otherwise.
--check runs every check a start runs (``signer.startup``), without listening or writing the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from shared import logs
from shared.config import ConfigError
from shared.fdlimit import raise_open_files_limit
from shared.version import version_text
from signer.config import SignerConfig, load_signer_config
from signer.startup import check_plaintext_allowed

PROG = "ocsp-signer"
log = logging.getLogger(PROG)


def _check(config: SignerConfig) -> None:
    from shared.clock import SystemClock
    from signer.startup import check

    ready = asyncio.run(check(config, SystemClock()))
    for r in ready.responders:
        print(f"{r.name}: responder {r.fingerprint[:16]}… key {r.key_label!r} {r.algorithm.value}, "
              f"valid until {r.not_after:%Y-%m-%dT%H:%M:%SZ}")
    status = ready.status
    for rc in config.responders:
        if status is not None and rc.name in status.sources:
            print(f"{rc.name}: statuses checked against {', '.join(map(str, status.sources[rc.name].files))} "
                  "(policy.verify_status)")
        else:
            print(f"{rc.name}: statuses NOT checked against the signer's own data (see the warning)")
    a = config.audit
    writers = ", ".join(f"{w!r} ({n} records)" for w, n in ready.writers)
    print(f"audit: {a.dir} writable, writer{'s' if len(ready.writers) > 1 else ''} {writers}, "
          f"key {a.key_label!r} {ready.audit_signer.algorithm.value}")
    processes = "1 process" if config.workers == 1 else f"{config.workers} workers"
    print(f"{config.file}: OK ({len(ready.responders)} responders, token "
          f"{ready.token.label!r}, {processes})")


def main(argv: list[str] | None = None) -> int:
    # A SIGHUP before the reload handler is installed (systemctl reload during start-up) must not kill
    # the process: ignored until signer.service.run installs the handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(
        prog=PROG, description="OCSP signer: signs typed statuses in a PKCS#11 token")
    parser.add_argument("--version", action="version", version=version_text(PROG))
    parser.add_argument("--config", required=True, help="path to signer.toml")
    parser.add_argument("--log-level", default="INFO", choices=logs.LEVELS, metavar="LEVEL",
                        help="DEBUG, INFO (default), WARNING or ERROR: the least severe log lines written "
                        "(by the workers too)")
    parser.add_argument("--check", action="store_true",
                        help="run every start-up check (config, token login, every responder key and the "
                             "audit key with a test signature, the audit log directory and lock, the "
                             "addresses), then exit; binds nothing and writes no audit record")
    # A worker of a supervisor ([signer] workers > 1, signer.workers): started by it, never by hand.
    for name in ("--worker", "--generation", "--control-fd", "--listen-fd", "--port"):
        parser.add_argument(name, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--responder-generations", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        # Ctrl-C reaches the whole process group: the supervisor stops its workers in order.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Names from outside (client certificates, Admin calls) cannot forge log lines (shared.logsafe).
    logs.setup(PROG, args.log_level, worker=args.worker)

    try:
        config = load_signer_config(args.config)
        logs.set_format(config.log_format)
        if args.check:
            _check(config)
            return 0
        raise_open_files_limit()  # logged once serving (signer.service.serve)
        if args.worker is not None:
            if args.control_fd is None:
                parser.error("--worker is for the supervisor's workers only")
            config = config.for_worker(args.worker, args.port)
        elif config.workers > 1:
            from signer.workers import supervise

            return supervise(config, args.log_level)
        from signer.handshake_log import prepare_grpc_environment, stop_capture

        prepare_grpc_environment(tls=config.tls is not None)  # before grpc is imported
        from signer.service import run

        if config.tls is None:
            check_plaintext_allowed(config)  # (prepare checks it again) refused before warned about
            if config.listen.kind == "unix":  # plaintext TCP gets startup's stronger warning instead
                log.info("gRPC on %s is plaintext (no [tls] table: no mTLS); its file mode and the "
                         "callers' uid decide who may sign", config.listen.address)
        try:
            if args.worker is not None:
                from signer.service import run_worker

                asyncio.run(run_worker(config, args.worker, args.generation or 1, args.control_fd, args.listen_fd,
                                       args.responder_generations))
            else:
                asyncio.run(run(config))
        finally:
            stop_capture()
        return 0
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
