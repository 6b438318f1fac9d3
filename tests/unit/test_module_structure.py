"""How the code is cut: no import cycles anywhere (function-level imports count), the demo is imported
by nothing outside signer/ctl/demo/ but ocspctl's command registry, nothing outside ocspctl imports
it, and no module (production, test or benchmark; the generated gRPC stubs excepted) passes 700 lines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "signer", "frontend")
DEMO = "signer.ctl.demo"
DEMO_REGISTRY = "signer.ctl.main"  # registers the `demo` command group
MAX_LINES = 700
GENERATED = ("shared/rpc/signer_pb2.py", "shared/rpc/signer_pb2_grpc.py")  # make proto writes them
SIZED = (*PACKAGES, "tests", "bench", "fuzz")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(name: str) -> set[str]:
    """The project modules ``name`` imports, anywhere in it (module level or inside functions);
    ``from pkg import mod`` counts as importing ``pkg.mod``."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value))
    return {m for m in found if m in MODULES and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycles() -> None:
    graph = {name: imported(name) for name in MODULES}
    assert "signer.ctl.common" in graph["signer.ctl.token_cmds"]  # the scan sees imports at all
    cycles = _cycles(graph)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _is_demo(name: str) -> bool:
    return name == DEMO or name.startswith(DEMO + ".")


def test_only_the_registry_imports_the_demo() -> None:
    """Production modules (everything outside signer/ctl/demo/) do not import the demo, ocspctl's token,
    rotate and audit commands included; ocspctl's main module registers the command group."""
    offenders = {name: sorted(filter(_is_demo, imported(name))) for name in MODULES
                 if not _is_demo(name) and name != DEMO_REGISTRY}
    assert not {k: v for k, v in offenders.items() if v}
    assert any(map(_is_demo, imported(DEMO_REGISTRY)))


PROBE = r"""
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_the_signer_does_not_import_ocspctl() -> None:
    """ocspctl is built on the signer's modules, never the other way round."""
    offenders = {name: sorted(m for m in imported(name) if m.startswith("signer.ctl"))
                 for name in MODULES if not name.startswith("signer.ctl")}
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_production_modules_loads_no_demo_module() -> None:
    production = [name for name in MODULES if name.startswith("signer") and not _is_demo(name)
                  and name not in (DEMO_REGISTRY, "signer.ctl.__main__")]
    assert "signer.ctl.token_cmds" in production and "signer.service" in production
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(production)], cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [m for m in json.loads(out.stdout) if _is_demo(m)] == []


def test_no_module_is_over_700_lines() -> None:
    files = [p for d in SIZED for p in sorted((ROOT / d).rglob("*.py"))
             if p.relative_to(ROOT).as_posix() not in GENERATED and ".venv" not in p.parts]
    assert MODULES["signer.audit.writer"] in files and ROOT / "tests" / "conftest.py" in files
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in files}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


GRPC_PROBE = r"""
import sys
import signer.__main__  # what ocsp-signer imports before signer.handshake_log sets gRPC core's environment
print("grpc" in sys.modules)
"""


def test_the_signer_entry_point_loads_no_grpc_before_its_set_up() -> None:
    """gRPC core reads GRPC_TRACE and the cipher list once, at its first import: signer/__main__ (and
    what it imports: config, startup) must not load grpc, or handshake refusals go unlogged and TLS 1.2
    stays on (signer.handshake_log)."""
    out = subprocess.run([sys.executable, "-c", GRPC_PROBE], cwd=ROOT, check=False, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
