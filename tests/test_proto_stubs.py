"""The committed gRPC stubs are exactly what `make proto` generates from proto/signer.proto."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run([sys.executable, "-m", "shared.rpc.generate", "--check"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_check_detects_a_stale_stub(tmp_path: Path) -> None:
    # Copy the tree's proto + generator, alter the proto, and the check must fail.
    import shutil

    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    proto = tmp_path / "proto" / "signer.proto"
    proto.write_text(proto.read_text().replace("message HealthRequest {}", "message HealthRequest { bool deep = 1; }"))
    result = subprocess.run([sys.executable, "-m", "shared.rpc.generate", "--check"], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "stale" in result.stderr
