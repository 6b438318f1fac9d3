"""The DMZ invariant: nothing under frontend/ imports the signer, PKCS#11, or private-key handling."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
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
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_no_signer_or_pkcs11_module_loaded() -> None:
    modules = _frontend_modules()
    assert {"frontend.app", "frontend.http_app", "frontend.__main__"} <= set(modules)
    bad = [m for m in modules if m.split(".")[0].startswith(FORBIDDEN_MODULES)]
    assert not bad, bad


def _forbidden_import(name: str) -> bool:
    top = name.split(".")[0]
    return top.startswith(FORBIDDEN_MODULES) or "pkcs11" in name.lower()


_IMPORTERS = ("__import__", "import_module")  # builtins.__import__, importlib.import_module


def _called_name(func: ast.expr) -> str | None:
    """``import_module`` for ``importlib.import_module(...)``, ``import_module(...)``, ``il.import_module``."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def scan_source(text: str, where: str) -> list[str]:
    """Every import of the signer, PKCS#11 or private-key code in one module's source, static or dynamic
    (``__import__``/``importlib.import_module`` with a forbidden name, or with a name that cannot be
    read statically: the frontend has no reason to import by computed name)."""
    problems = []
    for node in ast.walk(ast.parse(text, where)):
        at = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{at}: import {a.name}" for a in node.names if _forbidden_import(a.name)]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and _forbidden_import(mod):
                problems.append(f"{at}: from {mod} import ...")
            for a in node.names:
                if "private" in a.name.lower():
                    problems.append(f"{at}: from {mod} import {a.name}")
        elif isinstance(node, ast.Attribute) and "private" in node.attr.lower():
            problems.append(f"{at}: .{node.attr}")
        elif isinstance(node, ast.Name) and "private" in node.id.lower():
            problems.append(f"{at}: {node.id}")
        elif isinstance(node, ast.Call) and _called_name(node.func) in _IMPORTERS:
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                problems.append(f"{at}: {_called_name(node.func)}() of a computed module name")
            elif _forbidden_import(arg.value):
                problems.append(f"{at}: {_called_name(node.func)}({arg.value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                "load_pem_private_key" in node.value or "load_der_private_key" in node.value):
            problems.append(f"{at}: string naming a private-key loader")
    return problems


def test_static_scan() -> None:
    """frontend/ and every project module it loads (shared.*) hold no key-handling code."""
    shared = [ROOT.joinpath(*m.split(".")) for m in _frontend_modules() if m.split(".")[0] == "shared"]
    shared_files = [p.with_suffix(".py") if p.with_suffix(".py").exists() else p / "__init__.py" for p in shared]
    files = sorted(set(FRONTEND.rglob("*.py")) | {p for p in shared_files if p.exists()})
    assert files and any("shared" in p.parts for p in files)
    problems = []
    for path in files:
        problems += scan_source(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line", [
    "import signer.token",
    "import pkcs11",
    "from pkcs11 import Mechanism",
    "from signer import token",
    "from cryptography.hazmat.primitives.serialization import load_pem_private_key",
    "serialization.load_der_private_key(b'', None)",
    "key = private_key",
    "importlib.import_module('signer.token')",
    "import_module('pkcs11')",
    "__import__('signer')",
    "importlib.import_module(name)",
    "getattr(serialization, 'load_pem_private_key')",
])
def test_scanner_flags(line: str) -> None:
    """The scanner itself (not a copy of its loop) flags each of these."""
    assert scan_source(line + "\n", "probe.py"), line


@pytest.mark.parametrize("line", [
    "import asyncio",
    "from shared.ocsp.request import decode_request",
    "importlib.import_module('json')",
    "from cryptography import x509",
])
def test_scanner_passes(line: str) -> None:
    assert scan_source(line + "\n", "probe.py") == []
