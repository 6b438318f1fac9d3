"""TOML config reading with errors that name the file and the key.

Both halves describe their config as frozen dataclasses and fill them through a
``Section``. Each file kind declares its keys (``Keys``: frontend.config.FRONTEND_KEYS,
signer.config.SIGNER_KEYS, shared.ca_keys.CA_FILE_KEYS), and ``Section.load`` checks the whole file
against them before anything is read: a typo is an error naming the file and the key, with the
nearest valid key, and it comes before the "is required" it would otherwise cause. ``Section.finish()``
still rejects keys nobody read, for a file loaded without declared keys.

    sec = Section.load(path, FRONTEND_KEYS)
    port = sec.int("port", default=2560, minimum=1, maximum=65535)
    sec.finish()
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()

# The keys of a TOML table: each name maps to None (a value) or to the keys of its sub-table.
Keys = Mapping[str, "Keys | None"]


class ConfigError(Exception):
    def __init__(self, file: str | Path, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _all_keys(keys: Keys, prefix: str = "") -> Iterable[tuple[str, str]]:
    """(table, name) of every key declared in ``keys``, sub-tables included."""
    for name, sub in keys.items():
        yield prefix, name
        if sub is not None:
            yield from _all_keys(sub, _dotted(prefix, name))


def nearest_key(name: str, prefix: str, known: Iterable[str], everywhere: Keys | None = None) -> str | None:
    """The valid key an unknown ``prefix.name`` was most likely meant to be: the closest name of its own
    table (difflib), else the same name in another table of ``everywhere`` (a key put in the wrong
    table); None when nothing is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return _dotted(prefix, close[0])
    if everywhere is not None:
        for table, other in _all_keys(everywhere):
            if other == name and table != prefix:
                return _dotted(table, other)
    return None


def unknown_key(file: str | Path, prefix: str, name: str, known: Iterable[str],
                everywhere: Keys | None = None) -> ConfigError:
    """``file: prefix.name: unknown key (did you mean prefix.other?)``."""
    guess = nearest_key(name, prefix, known, everywhere)
    hint = f" (did you mean {guess}?)" if guess is not None else ""
    return ConfigError(file, _dotted(prefix, name), f"unknown key{hint}")


def check_keys(file: str | Path, data: Mapping[str, Any], keys: Keys, prefix: str = "",
               everywhere: Keys | None = None) -> None:
    """Raise ConfigError for the first key of ``data`` (a parsed TOML file or table) that ``keys`` does
    not declare, in every table. A value where a table is declared (or the reverse) is left to the
    reader, which says what it expected."""
    everywhere = keys if everywhere is None else everywhere
    for name, value in data.items():
        if name not in keys:
            raise unknown_key(file, prefix, name, keys, everywhere)
        sub = keys[name]
        if sub is not None and isinstance(value, dict):
            check_keys(file, value, sub, _dotted(prefix, name), everywhere)


_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str | int) -> timedelta:
    """'90', '90s', '5m', '12h', '7d', '250ms' -> timedelta. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like '30s', '5m', '12h' or '7d'")  # noqa: TRY004 - a config value error
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like '30s', '5m', '12h' or '7d'")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


class Section:
    """A view on one TOML table, remembering which keys were read."""

    def __init__(self, file: Path, data: dict[str, Any], prefix: str = "", keys: Keys | None = None,
                 everywhere: Keys | None = None) -> None:
        self.file = file
        self.data = data
        self.prefix = prefix
        # The keys this table declares (None: not declared; finish() then knows only what was read).
        self.keys = keys
        self._everywhere = everywhere if everywhere is not None else keys
        self._seen: set[str] = set()
        self._children: list[Section] = []

    @classmethod
    def load(cls, path: str | Path, keys: Keys | None = None) -> Section:
        """The file at ``path``; with ``keys``, every key in it, in every table, is checked against them
        first (``check_keys``), so an unknown key is the first error reported."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ConfigError(p, "", f"cannot read: {e.strerror or e}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(p, "", "not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(p, "", f"not valid TOML: {e}") from None
        if keys is not None:
            check_keys(p, data, keys)
        return cls(p, data, keys=keys)

    # -- helpers -------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def _declared(self, name: str) -> None:
        if self.keys is not None and name not in self.keys:
            # A programming error, not the operator's: check_keys would refuse this key in any file.
            raise RuntimeError(f"{self.file}: {self.key(name)} is read but not declared: add it to the "
                               "file's Keys (frontend.config, signer.config or shared.ca_keys)")

    def _get(self, name: str, default: Any) -> Any:
        self._declared(name)
        self._seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self.error(name, "is required")
        return default

    def _typed(self, name: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) and bool not in types:
            raise self.error(name, f"must be {what}, not {value!r}")
        if not isinstance(value, types):
            raise self.error(name, f"must be {what}, not {value!r}")
        return value

    # -- typed getters -------------------------------------------------------
    def str(self, name: str, default: Any = _MISSING, *, nonempty: bool = True) -> Any:
        value = self._typed(name, default, (str,), "a string")
        if nonempty and value is not default and value == "":
            raise self.error(name, "must not be empty")
        return value

    def int(self, name: str, default: Any = _MISSING, *, minimum: int | None = None,
            maximum: int | None = None) -> Any:
        value = self._typed(name, default, (int,), "an integer")
        if value is default:
            return value
        if minimum is not None and value < minimum:
            raise self.error(name, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum}, not {value}")
        return value

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        return self._typed(name, default, (bool,), "true or false")

    def choice(self, name: str, choices: Iterable[str], default: Any = _MISSING) -> Any:
        options = list(choices)
        value = self._typed(name, default, (str,), "a string")
        if value is not default and value not in options:
            raise self.error(name, f"must be one of {', '.join(map(repr, options))}, not {value!r}")
        return value

    def duration(self, name: str, default: Any = _MISSING, *,
                 minimum: timedelta | None = None, maximum: timedelta | None = None) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return parse_duration(value) if isinstance(value, (str, int)) else value
        try:
            d = parse_duration(value)
        except ValueError as e:
            raise self.error(name, str(e)) from None
        if minimum is not None and d < minimum:
            raise self.error(name, f"must be at least {minimum}, not {d}")
        if maximum is not None and d > maximum:
            raise self.error(name, f"must be at most {maximum}, not {d}")
        return d

    def path(self, name: str, default: Any = _MISSING, *, must_exist: bool = False) -> Any:
        """A path; relative paths are relative to the directory of the config file."""
        value = self.str(name, default)
        if value is default and default is None:
            return None
        p = Path(value)
        if not p.is_absolute():
            p = self.file.parent / p
        if must_exist and not p.exists():
            raise self.error(name, f"{p} does not exist")
        return p

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return value

    def section(self, name: str, *, required: bool = False) -> Section:
        """A sub-table; an absent optional one reads as empty (all defaults)."""
        value = self._get(name, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.error(name, "must be a table")
        sub = self.keys.get(name) if self.keys is not None else None
        child = Section(self.file, value, self.key(name), keys=sub, everywhere=self._everywhere)
        self._children.append(child)
        return child

    def ignore(self, *names: str) -> None:
        """Mark keys as known without reading them (they belong to another process)."""
        for name in names:
            self._declared(name)
        self._seen.update(names)

    def finish(self) -> None:
        """Reject keys nobody read: a typo must not become a silent default."""
        for name in self.data:
            if name not in self._seen:
                known = self.keys if self.keys is not None else self._seen
                raise unknown_key(self.file, self.prefix, name, known, self._everywhere)
        for child in self._children:
            child.finish()


def parse_certificate(data: bytes) -> Any:
    """The one certificate of a PEM or DER file's contents (a cryptography ``x509.Certificate``).

    The rule every certificate file of the project is read by (CA and responder certificates of both
    halves, the certificate of an Admin rotation, ocspctl's): PEM (anything holding "-----BEGIN") must
    hold exactly one certificate, anything else is DER. Raises ValueError whose text completes a
    sentence about the file: "holds 2 certificates; expected exactly one", "is not a PEM or DER
    certificate: ...".
    """
    from cryptography import x509

    pem = b"-----BEGIN" in data
    try:
        certs = x509.load_pem_x509_certificates(data) if pem else [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ValueError(f"is not a PEM or DER certificate: {e}") from None
    if len(certs) != 1:
        raise ValueError(f"holds {len(certs)} certificates; expected exactly one")
    return certs[0]


def read_certificate(sec: Section, name: str) -> tuple[Path, Any]:
    """The one certificate (PEM or DER) in the file the path key ``name`` names: (path, certificate).

    Both halves read their CA and responder certificates through this, so a file the signer accepts is
    one the frontend accepts too. A PEM file must hold exactly one certificate (``parse_certificate``).
    """
    path = sec.path(name)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise sec.error(name, f"cannot read {path}: {e.strerror or e}") from None
    try:
        return path, parse_certificate(data)
    except ValueError as e:
        raise sec.error(name, f"{path} {e}") from None
