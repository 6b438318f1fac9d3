"""Unknown config keys, in every table of every file kind: an error naming the file and the key as
unknown, with the nearest valid key, reported before the "is required" it would otherwise cause; and
the declared key lists agree with what the readers read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from frontend.config import FRONTEND_KEYS, load_ca_file, load_frontend_config
from shared.ca_keys import CA_FILE_KEYS
from shared.config import ConfigError, Keys, Section, check_keys
from signer.config import SIGNER_KEYS, load_signer_config
from tests.unit.signer.signer_fixtures import make_ca, write_setup

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return make_ca("alpha")


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new, 1))


# -- the CA file: both halves report a typo in either half's table ------------------------------------


@pytest.mark.parametrize("old,new,key,guess", [
    ("key_label = ", "key_lable = ", "responder.key_lable", "responder.key_label"),
    ("[responder]\n", "[responder]\nresponderid = \"key\"\n", "responder.responderid", "responder.responder_id"),
    ('source = "index"\n', 'sorce = "index"\n', "status.sorce", "status.source"),
    ('name = "alpha"\n', 'nmae = "alpha"\n', "nmae", "name"),
    ("[responder]\n", "[respnder]\n", "respnder", "responder"),
    ("[status]\n", "[status]\nkey_label = \"x\"\n", "status.key_label", "responder.key_label"),
    ("[status]\n", "[status]\nfrobnicate = 1\n", "status.frobnicate", None),
])
@pytest.mark.parametrize("half", ["signer", "frontend"])
def test_ca_file_typo(tmp_path: Path, ca, half: str, old: str, new: str, key: str, guess: str | None) -> None:  # type: ignore[no-untyped-def]
    conf = write_setup(tmp_path, [ca])
    (tmp_path / "ca.d" / "index.txt").write_text("")
    ca_file = tmp_path / "ca.d" / "alpha.toml"
    _replace(ca_file, old, new)
    with pytest.raises(ConfigError) as e:
        load_signer_config(conf) if half == "signer" else load_ca_file(ca_file)
    hint = f" (did you mean {guess}?)" if guess else ""
    assert str(e.value) == f"{ca_file}: {key}: unknown key{hint}"


def test_frontend_checks_the_signers_table_without_reading_it(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    """The frontend reads no [responder] key (a missing cert is the signer's business), yet a typo there
    is reported by it too."""
    write_setup(tmp_path, [ca])
    (tmp_path / "ca.d" / "index.txt").write_text("")
    ca_file = tmp_path / "ca.d" / "alpha.toml"
    _replace(ca_file, "\ncert = ", "\n# cert = ")
    assert load_ca_file(ca_file).name == "alpha"
    _replace(ca_file, "key_label", "key_lable")
    with pytest.raises(ConfigError, match=r"responder\.key_lable: unknown key \(did you mean responder\.key_label\?\)"):
        load_ca_file(ca_file)


# -- signer.toml and frontend.toml: every table -----------------------------------------------------


def _tables(keys: Keys) -> list[tuple[str, str]]:
    """(table, one of its keys) for the top level and each table."""
    out = [("", next(k for k, v in keys.items() if v is None))]
    out += [(t, next(iter(sub))) for t, sub in keys.items() if sub]
    return out


def _misspelt(name: str) -> str:
    return name[:-1] + name[-1] * 2 + "x" if len(name) < 4 else name[:2] + name[3] + name[2] + name[4:]


@pytest.mark.parametrize("table,name", _tables(SIGNER_KEYS))
def test_signer_toml_typo_in_every_table(tmp_path: Path, ca, table: str, name: str) -> None:  # type: ignore[no-untyped-def]
    conf = write_setup(tmp_path, [ca])
    wrong = _misspelt(name)
    header = f"[{table}]\n" if table else ""
    text = conf.read_text()
    if table and header in text:
        text = text.replace(header, f"{header}{wrong} = 1\n", 1)
    else:
        text = f"{wrong} = 1\n{text}" if not table else f"{text}{header}{wrong} = 1\n"
    conf.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_signer_config(conf)
    dotted = f"{table}.{name}" if table else name
    assert str(e.value) == f"{conf}: {table + '.' if table else ''}{wrong}: unknown key (did you mean {dotted}?)"


@pytest.mark.parametrize("table,name", _tables(FRONTEND_KEYS))
def test_frontend_toml_typo_in_every_table(tmp_path: Path, ca, table: str, name: str) -> None:  # type: ignore[no-untyped-def]
    write_setup(tmp_path, [ca])
    conf = tmp_path / "frontend.toml"
    wrong = _misspelt(name)
    conf.write_text(f'ca_dir = "ca.d"\n[{table}]\n{wrong} = 1\n' if table else f'{wrong} = 1\nca_dir = "ca.d"\n')
    with pytest.raises(ConfigError) as e:
        load_frontend_config(conf)
    dotted = f"{table}.{name}" if table else name
    assert str(e.value) == f"{conf}: {table + '.' if table else ''}{wrong}: unknown key (did you mean {dotted}?)"


def test_unknown_key_comes_before_the_required_key_it_explains(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    """audit.key_label misspelt: the message is the typo, not "audit.key_label: is required"."""
    conf = write_setup(tmp_path, [ca])
    _replace(conf, "key_label =", "keylabel =")
    with pytest.raises(ConfigError) as e:
        load_signer_config(conf)
    assert (e.value.key, e.value.message) == ("audit.keylabel", "unknown key (did you mean audit.key_label?)")


def test_the_pin_key_keeps_its_own_message(tmp_path: Path, ca) -> None:  # type: ignore[no-untyped-def]
    conf = write_setup(tmp_path, [ca])
    _replace(conf, "[token]\n", '[token]\npin = "1234"\n')
    with pytest.raises(ConfigError, match="the PIN never goes in config text"):
        load_signer_config(conf)


# -- the declared lists and the readers agree --------------------------------------------------------


def test_reading_an_undeclared_key_is_a_programming_error(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text("a = 1\n")
    sec = Section.load(f, {"a": None})
    assert sec.int("a") == 1
    with pytest.raises(RuntimeError, match="b is read but not declared"):
        sec.int("b", 0)


def test_a_value_where_a_table_is_declared_is_left_to_the_reader(tmp_path: Path) -> None:
    check_keys("x.toml", {"listen": 5}, {"listen": {"port": None}})
    with pytest.raises(ConfigError, match=r"x.toml: listen.prt: unknown key \(did you mean listen.port\?\)"):
        check_keys("x.toml", {"listen": {"prt": 1}}, {"listen": {"port": None}})


READERS = {
    "frontend": (FRONTEND_KEYS, ["frontend/config.py", "frontend/tls.py"]),
    "signer": (SIGNER_KEYS, ["signer/config.py", "signer/tls_config.py"]),
    "ca file": (CA_FILE_KEYS, ["frontend/config.py", "signer/config.py", "shared/status/config.py"]),
}


@pytest.mark.parametrize("kind", READERS)
def test_every_declared_key_is_named_by_a_reader(kind: str) -> None:
    """A declared key no reader names would let that key through silently (a typo in the list)."""
    keys, files = READERS[kind]
    text = "".join((ROOT / f).read_text() for f in files)
    named = set(re.findall(r'"([a-z_]+)"', text))

    def walk(k: Keys) -> list[str]:
        return [n for name, sub in k.items() for n in [name, *(walk(sub) if sub else [])]]

    missing = [n for n in walk(keys) if n not in named]
    assert not missing, f"declared for the {kind} but never named by its readers: {missing}"


def _with_commented_keys(text: str) -> str:
    """``text`` with its commented-out ``# key = value`` and ``# [table]`` lines made live."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^#\s?([a-z_]+ = .*|\[[a-z_.]+\])\s*(#.*)?$", line)
        out.append(m.group(1) if m else line)
    return "\n".join(out)


@pytest.mark.parametrize("path,keys", [("etc/frontend.toml", FRONTEND_KEYS), ("etc/signer.toml", SIGNER_KEYS),
                                       ("etc/ca.d/example.toml", CA_FILE_KEYS)])
def test_the_example_configs_use_declared_keys_only(path: str, keys: Keys) -> None:
    """Every key of the shipped examples, the optional ones commented out there included, is declared."""
    import tomllib

    text = (ROOT / path).read_text()
    check_keys(path, tomllib.loads(text), keys)
    if path != "etc/ca.d/example.toml":  # (its comments hold prose that is not TOML once uncommented)
        check_keys(path, tomllib.loads(_with_commented_keys(text)), keys)
