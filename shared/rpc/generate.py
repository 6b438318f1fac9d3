"""Generate (or, with --check, verify) the gRPC stubs from proto/signer.proto.

    python -m shared.rpc.generate          # write shared/rpc/signer_pb2*.py
    python -m shared.rpc.generate --check  # exit 1 when the committed stubs are stale
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
FILES = ("signer_pb2.py", "signer_pb2.pyi", "signer_pb2_grpc.py")


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # dev-time dependency only

    include = Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"-I{include}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        str(PROTO_DIR / "signer.proto"),
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    grpc_file = out / "signer_pb2_grpc.py"
    text = grpc_file.read_text()
    text = text.replace("import signer_pb2 as signer__pb2", "from shared.rpc import signer_pb2 as signer__pb2")
    grpc_file.write_text(text)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = [f for f in FILES if (Path(tmp) / f).read_bytes() != (OUT_DIR / f).read_bytes()]
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        return 0
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
