"""`ocspctl --help` and every command's and subcommand's `--help`, against the text committed in
tests/unit/signer/ctl_help/: the commands, their options and their help stay what they were (a moved or
re-registered command that loses or changes an option fails here).

The installed `ocspctl` entry point is what runs, in this process, with an 80-column terminal.
argparse lays help out differently from one Python version to the next, so the texts are compared on
the Python version they were recorded with (ctl_help/PYTHON) and the test is skipped on others.
After a deliberate change of a command's options, record the texts again:

    UPDATE_CTL_HELP=1 .venv/bin/python -m pytest -q tests/unit/signer/test_ctl_help.py
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

EXPECTED = Path(__file__).with_name("ctl_help")
UPDATE = os.environ.get("UPDATE_CTL_HELP") == "1"
RECORDED_WITH = (EXPECTED / "PYTHON").read_text().strip() if (EXPECTED / "PYTHON").exists() else None
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
# `ocspctl audit` has a parser of its own (its usage errors and exit codes differ): its subcommands are
# not in the main parser's tree.
OWN_PARSER_COMMANDS = [("audit",), ("audit", "verify"), ("audit", "show")]


def _entry_point() -> Any:
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "ocspctl"]
    return ep


def _main() -> Callable[[list[str]], int]:
    return _entry_point().load()


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name)
                yield from _subcommands(child, (*path, name))


def commands() -> list[tuple[str, ...]]:
    """Every command path of ocspctl's parser, () being ocspctl itself."""
    module = importlib.import_module(_entry_point().module)
    found = [(), *_subcommands(module.build_parser())]
    return sorted(set(found) | set(OWN_PARSER_COMMANDS))


def _file(path: tuple[str, ...]) -> Path:
    return EXPECTED / ("_".join(("ocspctl", *path)) + ".txt")


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        status = _main()([*path, "--help"])
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    assert status in (0, None), f"ocspctl {' '.join(path)} --help: exit status {status}: {out.err}"
    assert out.err == ""
    return out.out


@pytest.fixture(autouse=True)
def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "25")
    if UPDATE:
        EXPECTED.mkdir(exist_ok=True)
        (EXPECTED / "PYTHON").write_text(RUNNING + "\n")
    elif RECORDED_WITH != RUNNING:
        pytest.skip(f"help texts recorded with Python {RECORDED_WITH}, this is {RUNNING}")


@pytest.mark.parametrize("path", commands(), ids=lambda p: " ".join(("ocspctl", *p)))
def test_help_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(path, capsys)
    if UPDATE:
        _file(path).write_text(text)
    assert _file(path).exists(), f"no recorded help for `ocspctl {' '.join(path)}`: record it (see the docstring)"
    assert text == _file(path).read_text()


def test_every_recorded_command_still_exists() -> None:
    recorded = {p.name for p in EXPECTED.glob("ocspctl*.txt")}
    assert recorded == {_file(path).name for path in commands()}
