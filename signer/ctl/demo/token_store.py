"""Which SoftHSM token store a demo directory uses, so that every ``ocspctl demo`` command finds the
demo's own token wherever it is run from, and never works on another one (the system's
/etc/softhsm/softhsm2.conf, which SoftHSM reads when SOFTHSM2_CONF is not set).

``demo setup`` records the store as ``D/softhsm2.conf``: a symbolic link to the SoftHSM
configuration SOFTHSM2_CONF named when the demo was made (``make run``: var/softhsm2.conf), or, when
it named none, a configuration of a token directory inside the demo (``D/softhsm/tokens``). Each
later demo command sets SOFTHSM2_CONF to it, for itself and the programs it starts, before a PKCS#11
module is loaded; a demo directory without a record is refused unless SOFTHSM2_CONF is set.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from signer.ctl.common import ocspctl_command

RECORD = "softhsm2.conf"
VARIABLE = "SOFTHSM2_CONF"


class DemoTokenError(Exception):
    """The demo's token store cannot be found; the message says what to run."""


def _same(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _own_store(d: Path) -> Path:
    tokens = d / "softhsm" / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    tokens.chmod(0o700)
    conf = d / RECORD
    conf.write_text("# SoftHSM configuration of this demo (written by `ocspctl demo setup`): its token\n"
                    "# lives in the demo directory. `ocspctl demo ...` commands use it by themselves.\n"
                    f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n")
    return conf


def use_demo_token(d: Path, *, setup: bool, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Point ``environ[SOFTHSM2_CONF]`` at demo ``d``'s token store. Returns a note for the operator when
    it replaced another value. ``setup``: a new demo (no token.pin yet) with SOFTHSM2_CONF unset gets a
    store of its own; a demo without a record then uses SOFTHSM2_CONF (``record_token_store`` records
    it once the token is open). Raises DemoTokenError when the store cannot be known."""
    record = d / RECORD
    current = environ.get(VARIABLE) or None
    if record.is_symlink() or record.exists():
        if not record.is_file():
            raise DemoTokenError(
                f"{record} names {os.readlink(record) if record.is_symlink() else 'no file'}, which does not "
                f"exist: the demo's SoftHSM token is gone with it; remove {d} and run "
                f"`{ocspctl_command()} demo setup --dir {d}` to make a new demo")
        if current is not None and _same(current, record):
            return None
        environ[VARIABLE] = str(record)
        if current is None:
            return None
        shown = f"{record} (-> {record.resolve()})" if record.is_symlink() else str(record)
        return f"using the demo's SoftHSM token store {shown}, not {VARIABLE}={current}"
    if current is not None:
        return None
    if setup and not (d / "token.pin").exists():
        environ[VARIABLE] = str(_own_store(d))
        return None
    guess = d.parent / RECORD  # make's var/demo was made with var/softhsm2.conf
    conf = guess if guess.is_file() else "/path/to/softhsm2.conf"
    raise DemoTokenError(
        f"{d} does not record which SoftHSM token store it uses (it was set up by an older ocspctl) and "
        f"{VARIABLE} is not set, so this would use the system's token store. Run setup once with the "
        f"configuration the demo was made with: {VARIABLE}={conf} {ocspctl_command()} demo setup --dir {d} "
        "(later demo commands then find it by themselves)")


def record_token_store(d: Path, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """After ``demo setup`` opened the demo's token: record the store SOFTHSM2_CONF names, if the demo
    directory has no record yet. Returns what was written, for setup's log."""
    record = d / RECORD
    if record.is_symlink() or record.exists():
        return None
    target = Path(environ[VARIABLE]).resolve()
    record.symlink_to(target)
    return f"recorded the SoftHSM token store: {record} -> {target}"
