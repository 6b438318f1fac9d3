"""The DMZ invariant: nothing under frontend/ imports the signer, PKCS#11, or private-key handling."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
FORBIDDEN_MODULES = ("signer", "pkcs11")

PROBE = r"""
import importlib, json, pkgutil, sys
import frontend, frontend.__main__
for info in pkgutil.walk_packages(frontend.__path__, "frontend."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def _frontend_modules() -> list[str]:
    """Every module a frontend process loads (imported in a fresh interpreter)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_no_signer_or_pkcs11_module_loaded() -> None:
    modules = _frontend_modules()
    assert "frontend.server" in modules and "frontend.__main__" in modules
    bad = [m for m in modules if m.split(".")[0].startswith(FORBIDDEN_MODULES)]
    assert not bad, bad


def _forbidden_import(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith(FORBIDDEN_MODULES) or "pkcs11" in name.lower()


def test_static_scan() -> None:
    """frontend/ and every project module it loads (shared.*) hold no key-handling code."""
    problems = []
    shared = [ROOT.joinpath(*m.split(".")) for m in _frontend_modules() if m.split(".")[0] == "shared"]
    shared_files = [p.with_suffix(".py") if p.with_suffix(".py").exists() else p / "__init__.py" for p in shared]
    files = sorted(set(FRONTEND.rglob("*.py")) | {p for p in shared_files if p.exists()})
    assert files and any("shared" in p.parts for p in files)
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [f"{where}: import {a.name}" for a in node.names if _forbidden_import(a.name)]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 0 and _forbidden_import(mod):
                    problems.append(f"{where}: from {mod} import ...")
                for a in node.names:
                    if "private" in a.name.lower():
                        problems.append(f"{where}: from {mod} import {a.name}")
            elif isinstance(node, ast.Attribute) and "private" in node.attr.lower():
                problems.append(f"{where}: .{node.attr}")
            elif isinstance(node, ast.Name) and "private" in node.id.lower():
                problems.append(f"{where}: {node.id}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                    "__import__",) and node.args and isinstance(node.args[0], ast.Constant) \
                    and _forbidden_import(str(node.args[0].value)):
                problems.append(f"{where}: __import__({node.args[0].value!r})")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                    "load_pem_private_key" in node.value or "load_der_private_key" in node.value):
                problems.append(f"{where}: string naming a private-key loader")
    assert not problems, "\n".join(problems)


def test_scan_catches_violations(tmp_path: Path) -> None:
    # The scanner's own check: these lines must all be flagged.
    bad = ("import signer.token\n"
           "from pkcs11 import Mechanism\n"
           "from cryptography.hazmat.primitives.serialization import load_pem_private_key\n"
           "from cryptography.hazmat.primitives import serialization\n"
           "serialization.load_der_private_key(b'', None)\n")
    tree = ast.parse(bad)
    hits = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_forbidden_import(a.name) for a in node.names):
            hits += 1
        elif isinstance(node, ast.ImportFrom) and (_forbidden_import(node.module or "")
                                                   or any("private" in a.name for a in node.names)):
            hits += 1
        elif isinstance(node, ast.Attribute) and "private" in node.attr:
            hits += 1
    assert hits == 4
