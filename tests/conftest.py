"""Session-wide fixtures.

``softhsm``: one SoftHSM token directory for the whole test session. python-pkcs11 loads (and
C_Initializes) a PKCS#11 module once per process, and SoftHSM reads SOFTHSM2_CONF at C_Initialize,
so every in-process test that touches SoftHSM must go through this fixture: it sets SOFTHSM2_CONF
before the module is first loaded and keeps one logged-in ``Pkcs11Token`` for everyone.
Child processes get ``softhsm.env``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class SoftHsm:
    conf: Path
    module: str
    label: str  # the token the session logs in to
    pin: str
    so_pin: str
    # A second token nobody logs in to (PKCS#11 login state is per token and per process).
    spare_label: str
    env: dict[str, str]
    _token: Any = field(default=None, repr=False)

    def token(self) -> Any:
        """The session's one logged-in Pkcs11Token on ``label``."""
        if self._token is None:
            from signer.token import Pkcs11Token

            self._token = Pkcs11Token(self.module, pin=self.pin, token_label=self.label)
        return self._token


def _init_token(env: dict[str, str], label: str, pin: str, so_pin: str) -> None:
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin,
                    "--so-pin", so_pin], env=env, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    if not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM 2 is not installed (apt-get install softhsm2)")
    import pkcs11

    if SOFTHSM_MODULE in getattr(pkcs11, "_loaded", {}):
        pytest.fail("SoftHSM was loaded in this process before the softhsm fixture set SOFTHSM2_CONF; "
                    "in-process SoftHSM tests must use the softhsm fixture")
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    hsm = SoftHsm(conf=conf, module=SOFTHSM_MODULE, label="unit-test", pin="1234-user", so_pin="5678-so",
                  spare_label="unit-spare", env=env)
    _init_token(env, hsm.label, hsm.pin, hsm.so_pin)
    _init_token(env, hsm.spare_label, hsm.pin, hsm.so_pin)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        yield hsm
        if hsm._token is not None:
            hsm._token.close()


@pytest.fixture(scope="session")
def go_ocsp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's OCSP client, built once (tests/clients/go.py); fails when Go is missing (make system)."""
    from tests.clients import go

    try:
        return go.build(tmp_path_factory.mktemp("go"))
    except RuntimeError as e:
        pytest.fail(str(e))


# -- making a path unwritable, for fail-closed tests ------------------------------------------------

def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@pytest.fixture
def make_unwritable() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """chmod for ordinary users; root ignores modes, so root gets the immutable attribute."""
    undo: list[Callable[[], None]] = []

    def lock(path: Path) -> Callable[[], None]:
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)

            def restore() -> None:
                path.chmod(mode)
        else:
            if shutil.which("chattr") is None:
                pytest.skip("running as root without chattr: cannot make a path unwritable")
            try:
                _chattr("+i", path)
            except subprocess.CalledProcessError:
                pytest.skip("running as root and chattr +i is not permitted here")

            def restore() -> None:
                _chattr("-i", path)
        undo.append(restore)
        return restore

    yield lock
    for restore in undo:
        try:
            restore()
        except Exception:  # noqa: BLE001, S110 - best effort: the test's own restore may have run
            pass
