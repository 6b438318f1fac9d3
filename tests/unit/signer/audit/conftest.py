"""Fixtures of the audit log tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.signer.audit.audit_helpers import write_log


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """The 12-record log of ``write_log`` (its docstring says which line holds what)."""
    return write_log(tmp_path)
