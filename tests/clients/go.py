"""Go's OCSP client (golang.org/x/crypto/ocsp, what Go servers use for stapling) as a test oracle.

``make system`` installs Debian's golang-go and golang-golang-x-crypto-dev; the program in goocsp/
is built once per test session in GOPATH mode against that packaged x/crypto (no module download).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"


def build(out_dir: Path) -> Path:
    """Compile goocsp into ``out_dir``; raises RuntimeError saying what is missing."""
    go = shutil.which("go")
    if go is None or not (Path(GOPATH) / "src/golang.org/x/crypto/ocsp").is_dir():
        raise RuntimeError("Go's OCSP client needs golang-go and golang-golang-x-crypto-dev "
                           "(make system installs them)")
    out = out_dir / "goocsp"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOCACHE": str(out_dir / "gocache"),
           "GOFLAGS": ""}
    result = subprocess.run([go, "build", "-o", str(out), str(HERE / "goocsp" / "main.go")], env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"go build failed:\n{result.stdout}{result.stderr}")
    return out


def judge(binary: Path, response_der: bytes, issuer_pem: bytes, work: Path) -> tuple[int, str]:
    """(exit status, output) of Go's ocsp.ParseResponse(response, issuer): 0 and the status when
    Go accepts the answer, 1 and the reason when it rejects it."""
    resp = work / "response.der"
    issuer = work / "issuer.pem"
    resp.write_bytes(response_der)
    issuer.write_bytes(issuer_pem)
    result = subprocess.run([str(binary), str(resp), str(issuer)], capture_output=True, text=True, check=False,
                            timeout=60)
    return result.returncode, (result.stdout + result.stderr).strip()
