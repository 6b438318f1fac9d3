"""ocsp-signer --config FILE [--check]: wiring only.

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a passing --check; 2 for a configuration
problem (printed as ``ocsp-signer: <file>: <key>: <message>``, before anything starts); 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys

from shared import logsafe
from shared.config import ConfigError
from signer.config import SignerConfig, load_signer_config

PROG = "ocsp-signer"
log = logging.getLogger(PROG)


def check_plaintext_allowed(config: SignerConfig) -> None:
    """Without a [tls] table gRPC is plaintext: only a unix socket or a loopback address may listen."""
    listen = config.listen
    if listen.kind == "unix" or config.tls is not None:
        return
    host = listen.host or ""
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ConfigError(config.file, "listen.address",
                          f"{listen.address} is not a loopback address; plaintext gRPC may only listen on "
                          "unix: sockets or loopback (mTLS is not configured)")


def _check(config: SignerConfig) -> None:
    from signer.responders import load_responders
    from signer.service import open_token

    token = open_token(config)
    try:
        responders = load_responders(config, token)
    finally:
        token.close()
    for r in responders:
        print(f"{r.name}: responder {r.fingerprint[:16]}… key {r.key_label!r} {r.algorithm.value}, "
              f"valid until {r.not_after:%Y-%m-%dT%H:%M:%SZ}")
    print(f"{config.file}: OK ({len(responders)} responders, token {token.label!r})")


def main(argv: list[str] | None = None) -> int:
    # A SIGHUP before the reload handler is installed (systemctl reload during start-up) must not kill
    # the process: ignored until signer.service.run installs the handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    parser = argparse.ArgumentParser(
        prog=PROG, description="OCSP signer: signs typed statuses in a PKCS#11 token")
    parser.add_argument("--config", required=True, help="path to signer.toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, log in to the token, check every responder key; then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"{PROG}: %(levelname)s: %(message)s")
    logsafe.install()  # names from outside (client certificates, Admin calls) cannot forge log lines

    try:
        config = load_signer_config(args.config)
        check_plaintext_allowed(config)
        if args.check:
            _check(config)
            return 0
        from signer.handshake_log import prepare_grpc_environment, stop_capture

        prepare_grpc_environment(tls=config.tls is not None)  # before grpc is imported
        from signer.service import run

        if config.tls is None:
            log.warning("gRPC on %s is plaintext (no [tls] table: no mTLS)", config.listen.address)
        try:
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
