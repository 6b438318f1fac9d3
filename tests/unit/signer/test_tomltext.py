"""signer.tomltext.toml_string: whatever the value, tomllib reads back exactly that value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signer.tomltext import toml_string


@given(st.text())
def test_round_trip(value: str) -> None:
    assert tomllib.loads(f"key = {toml_string(value)}\n") == {"key": value}


@pytest.mark.parametrize("value,text", [
    ("plain", '"plain"'),
    ('say "hi"', r'"say \"hi\""'),
    ("C:\\dir", r'"C:\\dir"'),
    ("a\nb\tc\x00\x7f", r'"a\nb\tc\u0000\u007F"'),
    (Path("/var/demo/ca.pem"), '"/var/demo/ca.pem"'),
])
def test_escapes(value: str | Path, text: str) -> None:
    assert toml_string(value) == text
