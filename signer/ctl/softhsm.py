"""SoftHSM's own tool, softhsm2-util: the tokens it has, and initialising one (``ocspctl init-token``,
``ocspctl demo setup``).

softhsm2-util reads PINs from its terminal; they reach it through a pseudo-terminal, never its argv.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from signer.ctl.common import CtlError


def softhsm_token_labels() -> list[str]:
    """Labels of the initialised SoftHSM tokens, as softhsm2-util reports them."""
    try:
        out = subprocess.run(["softhsm2-util", "--show-slots"], capture_output=True, text=True, timeout=60,
                             check=False)
    except FileNotFoundError:
        raise CtlError("softhsm2-util is not installed (apt-get install softhsm2)") from None
    if out.returncode != 0:
        raise CtlError(f"softhsm2-util --show-slots failed: {out.stderr.strip() or out.stdout.strip()}")
    labels = []
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Label" and value.strip():
            labels.append(value.strip())
    return labels


def softhsm_init_token(label: str, pin: str, so_pin: str) -> bool:
    """Initialise a free SoftHSM slot as token ``label``; False if that token already exists.

    softhsm2-util reads the PINs from its terminal; we give it a pseudo-terminal and answer its
    prompts, so the PINs never appear in a process list.
    """
    for name, value in (("user PIN", pin), ("SO PIN", so_pin)):
        if not 4 <= len(value) <= 255:
            raise CtlError(f"the {name} must be 4 to 255 characters long")
    if label in softhsm_token_labels():
        return False
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(["softhsm2-util", "--init-token", "--free", "--label", label],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    finally:
        os.close(slave)
    transcript = b""
    pending = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            transcript += chunk
            pending += chunk
            if pending.rstrip().endswith(b"PIN:"):
                answer = so_pin if b"SO PIN" in pending.splitlines()[-1] else pin
                os.write(master, answer.encode() + b"\n")
                pending = b""
        else:
            proc.kill()
    finally:
        os.close(master)
        rc = proc.wait()
    if rc != 0:
        text = transcript.decode(errors="replace").replace("\r", "")
        errors = [line for line in text.splitlines() if "ERROR" in line] or text.splitlines()[-1:]
        raise CtlError(f"softhsm2-util could not initialise token {label!r}: {' '.join(errors)}")
    return True
