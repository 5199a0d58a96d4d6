"""The record of documents found valid (common/validated.py): a hit skips the schema
validator, and nothing but exactly the data that passed can hit."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from pullback.common import schema as schemas
from pullback.common import validated
from pullback.common.archive import sidecar
from pullback.common.errors import ArchiveError
from pullback.common.yamlfile import load
from tests.unit.test_sidecar import GOOD

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the record is root's")


@pytest.fixture
def memo(tmp_path, monkeypatch):
    directory = tmp_path / "validated"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    monkeypatch.setattr(validated, "MEMO_DIR", directory)
    return directory


@pytest.fixture
def no_validator(monkeypatch):
    """Makes loading the validator fail: a hit must not need it."""
    monkeypatch.setattr(schemas, "jsonschema_module", _refuse)
    monkeypatch.setattr(sidecar, "jsonschema_module", _refuse)


def test_data_of_another_type_or_shape_never_shares_a_name(memo):
    schema = {"type": "object"}

    def name(data):
        return validated.fingerprint("config", schema, data)

    assert name({1: "x"}) != name({"1": "x"})
    assert name({"a": True}) != name({"a": 1}) != name({"a": 1.0})
    assert name({"a": [1, 2]}) != name({"a": [2, 1]})
    assert name({"a": None}) != name({"a": "None"}) != name({})
    assert name({"a": 1, "b": 2}) == name({"b": 2, "a": 1})  # order of keys: the same
    assert validated.fingerprint("sidecar", schema, {}) != name({})
    assert name({}) != validated.fingerprint("config", {"type": "array"}, {})


def test_data_nested_too_deep_is_never_recorded(memo):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert validated.fingerprint("sidecar", {}, {"a": deep}) == ""
    validated.remember("")
    assert not validated.known("")
    assert os.listdir(memo) == []
    # such a sidecar is validated as any other (its unknown key, a newer writer's, is
    # allowed), and one too deep for the JSON decoder is refused in words
    assert sidecar.from_data({**json.loads(json.dumps(GOOD)), "deep": deep}).host == "web1"
    assert os.listdir(memo) == []  # validated, and still not recorded
    with pytest.raises(ArchiveError, match="not valid JSON"):
        sidecar.parse('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")


def test_a_valid_configuration_is_validated_once(tmp_path, memo, monkeypatch):
    path = tmp_path / "client.yaml"
    path.write_text("hostname: web1\n")
    schema = schemas.load_schema("pullback.common", "client")
    assert schemas.validate(load(path), schema) == []
    assert len(os.listdir(memo)) == 1
    monkeypatch.setattr(schemas, "jsonschema_module", _refuse)
    assert schemas.validate(load(path), schema) == []  # the record: no validator
    path.write_text("hostname: web2\n")  # other data: validated again
    with pytest.raises(AssertionError, match="validator"):
        schemas.validate(load(path), schema)


def test_an_invalid_configuration_is_never_recorded(tmp_path, memo):
    path = tmp_path / "client.yaml"
    path.write_text("hostname: [web1]\n")
    schema = schemas.load_schema("pullback.common", "client")
    for _ in range(2):
        problems = schemas.validate(load(path), schema)
        assert problems and problems[0].key == "hostname"
    assert os.listdir(memo) == []


def test_a_published_sidecar_is_validated_once_and_then_read_without_the_validator(
    memo, monkeypatch
):
    data = json.loads(json.dumps(GOOD))
    del data["added_later"], data["archive"]["future_key"]
    del data["services"][0]["tasks"][0]["extra"]
    written = json.dumps(data)
    sidecar.record_written(written)  # validated here (the run publishing it)
    monkeypatch.setattr(sidecar, "jsonschema_module", _refuse)
    assert sidecar.parse(written, record=True).host == "web1"
    with pytest.raises(AssertionError, match="validator"):  # a server never asks the record
        sidecar.parse(written)
    data["host"] = "web2"
    data["archive"]["name"] = "web2-20261122T030000Z.tar.zst"
    with pytest.raises(AssertionError, match="validator"):
        sidecar.parse(json.dumps(data), record=True)


def test_a_sidecar_the_writer_makes_invalid_is_refused_when_published(memo):
    """1001 services: the schema's limit; the server would refuse it at every pull."""
    data = json.loads(json.dumps(GOOD))
    data["services"] = [dict(data["services"][0], name=f"s{n}") for n in range(1001)]
    with pytest.raises(ArchiveError, match="malformed"):
        sidecar.record_written(json.dumps(data))
    assert os.listdir(memo) == []


def test_a_clients_sidecar_read_by_a_server_is_never_hashed(memo, monkeypatch):
    """A client could make a server hash megabytes of junk under a key the schema lets
    through, and evict its records (outside review): the server validates as before."""

    def refuse(*args, **kwargs):
        raise AssertionError("hashed")

    monkeypatch.setattr(validated, "fingerprint", refuse)
    junk = json.loads(json.dumps(GOOD))
    junk["added_later"] = {str(n): n for n in range(1000)}
    assert sidecar.from_data(junk).host == "web1"
    assert os.listdir(memo) == []


def test_data_of_types_json_lacks_is_never_recorded(memo):
    for value in ((("echo", "hi"),), {1, 2}, b"x", dt.date(2026, 1, 1)):
        assert validated.fingerprint("config", {}, {"pre": value}) == ""


def test_a_document_only_root_reads_is_named_by_a_keyed_hash(tmp_path, memo, monkeypatch):
    public = validated.fingerprint("config", {}, {"password": "q7zx"})
    private = validated.fingerprint("config", {}, {"password": "q7zx"}, private=True)
    assert public and private and public != private
    key = memo / validated.KEY_NAME
    assert oct(key.stat().st_mode & 0o777) == "0o600" and len(key.read_bytes()) == 32
    path = tmp_path / "service.yaml"
    path.write_text("service: {name: app}\n")
    path.chmod(0o600)
    assert schemas._private(load(path))
    path.chmod(0o640)
    assert not schemas._private(load(path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # cannot make the key: no name
    key.unlink()
    assert validated.fingerprint("config", {}, {"a": 1}, private=True) == ""
    assert validated.fingerprint("config", {}, {"a": 1}) != ""


def test_every_kind_of_sidecar_the_writer_makes_passes_the_schema():
    """What record_written relies on: the writer's output is valid (full, delta, lean)."""
    full = sidecar.parse(json.dumps(GOOD))
    base = sidecar.BaseRef("web1-20261121T030000Z.tar.zst", "b" * 64)
    for lean in (False, True):
        delta = json.loads(json.dumps(GOOD))
        delta["format"] = sidecar.LEAN_FORMAT if lean else sidecar.DELTA_FORMAT
        delta["archive"].update(kind="delta", manifest_sha256="c" * 64, base=base.__dict__)
        parsed = sidecar.parse(json.dumps(delta))
        assert parsed.archive.lean is lean
        for text in (parsed.to_json(), parsed.to_json(as_full=True)):
            sidecar._check_schema(json.loads(text))  # raises when not valid
    sidecar._check_schema(json.loads(full.to_json()))


def test_an_untrusted_directory_or_record_is_not_used(memo, monkeypatch):
    name = validated.fingerprint("config", {}, {"a": 1})
    validated.remember(name)
    assert validated.known(name)
    os.chmod(memo, 0o775)  # others may write: not a record of root's
    assert not validated.known(name)
    os.chmod(memo, 0o755)
    os.chown(memo / name, 65534, 65534)  # a name root did not write
    assert not validated.known(name)
    os.unlink(memo / name)
    os.symlink("/etc/hostname", memo / name)
    assert not validated.known(name)
    os.unlink(memo / name)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the serve endpoint's user
    validated.remember(name)
    assert os.listdir(memo) == []


def test_the_record_keeps_the_most_recently_used(memo, monkeypatch):
    monkeypatch.setattr(validated, "MAX_ENTRIES", 4)
    names = [validated.fingerprint("config", {}, {"n": n}) for n in range(5)]
    for age, name in enumerate(names[:4]):
        validated.remember(name)
        os.utime(memo / name, (1000 + age, 1000 + age))
    assert validated.known(names[0])  # used now: the newest
    validated.remember(names[4])  # five: down to three (three quarters of four)
    assert sorted(os.listdir(memo)) == sorted([names[0], names[3], names[4]])


def test_a_record_dated_ahead_of_the_clock_counts_as_the_oldest(memo, monkeypatch):
    monkeypatch.setattr(validated, "MAX_ENTRIES", 4)
    names = [validated.fingerprint("config", {}, {"n": n}) for n in range(5)]
    ahead = 4_000_000_000  # 2096
    for name in names[:4]:
        validated.remember(name)
        os.utime(memo / name, (ahead, ahead))
    validated.remember(names[4])  # the new one stays; the future ones go first
    assert names[4] in os.listdir(memo) and len(os.listdir(memo)) == 3


def _refuse():
    raise AssertionError("the validator was loaded")
