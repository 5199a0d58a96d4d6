"""The sidecar is read from untrusted hosts: anything malformed is refused in words."""

from __future__ import annotations

import json

import pytest

from pullback.common.archive import sidecar
from pullback.common.errors import ArchiveError
from pullback.common.outcome import Status

GOOD = {
    "format": 1,
    "host": "web1",
    "stamp": "20261122T030000Z",
    "created": "2026-11-22T03:00:00Z",
    "pullback_version": "0.1.0",
    "status": "partial",
    "archive": {
        "name": "web1-20261122T030000Z.tar.zst",
        "size": 10,
        "sha256": "a" * 64,
        "compression": "zstd",
        "future_key": 1,
    },
    "services": [
        {
            "name": "db",
            "status": "failed",
            "error": "boom",
            "tasks": [{"type": "files", "status": "failed", "extra": True}],
        }
    ],
    "added_later": {"x": 1},
}


def test_round_trip_and_unknown_keys_from_newer_writers():
    parsed = sidecar.parse(json.dumps(GOOD), expected_name="web1-20261122T030000Z.tar.zst")
    assert parsed.failed_services == ["db"]
    again = sidecar.parse(parsed.to_json())
    assert again == parsed
    assert parsed.to_json().startswith('{\n  "format": 1,')


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format=4), "sidecar format 4 is not one this pullback reads"),
        (lambda d: d.update(format=2), "at archive: 'kind' is a required property"),
        (
            lambda d: d["archive"].update(
                base={"name": "web1-20261121T030000Z.tar", "manifest_sha256": "b" * 64}
            ),
            "at archive: .* should not be valid",
        ),
        (
            lambda d: (
                d.update(format=2)
                or d["archive"].update(
                    kind="delta",
                    manifest_sha256="c" * 64,
                    base={"name": "web1-2026.tar", "manifest_sha256": "b" * 64},
                )
            ),
            "at archive/base/name",
        ),
        (
            lambda d: (
                d.update(format=2)
                or d["archive"].update(
                    kind="delta",
                    manifest_sha256="c" * 64,
                    base={"name": "web1-20261121T030000Z.tar\n", "manifest_sha256": "b" * 64},
                )
            ),
            "base archive name has extra characters",
        ),
        (lambda d: d["archive"].update(name="../../etc/passwd"), "at archive/name"),
        (lambda d: d["archive"].update(sha256="zz"), "at archive/sha256"),
        (lambda d: d["archive"].update(size=-1), "at archive/size"),
        (lambda d: d.pop("services"), "'services' is a required property"),
        (lambda d: d.update(host="bad host/x"), "at host"),
    ],
)
def test_malformed_sidecars_are_refused(mutate, message):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(ArchiveError, match=message):
        sidecar.parse(json.dumps(data))


def test_a_delta_names_its_base_and_is_kept_in_snapshots_as_format_1():
    data = json.loads(json.dumps(GOOD))
    base = {"name": "web1-20261121T030000Z.tar.zst", "manifest_sha256": "b" * 64}
    data["format"] = 2
    data["archive"].update(kind="delta", manifest_sha256="c" * 64, base=base)
    parsed = sidecar.parse(json.dumps(data))
    assert parsed.archive.is_delta
    assert parsed.archive.base == sidecar.BaseRef(base["name"], "b" * 64)
    assert sidecar.parse(parsed.to_json()) == parsed
    assert json.loads(parsed.to_json())["format"] == 2
    kept = json.loads(parsed.to_json(as_full=True))
    assert kept["format"] == 1 and kept["archive"]["kind"] == "full"
    assert "base" not in kept["archive"]
    assert not sidecar.parse(json.dumps(kept)).archive.is_delta


def test_not_json_and_wrong_archive():
    with pytest.raises(ArchiveError, match="not valid JSON"):
        sidecar.parse(b"\x00garbage")
    with pytest.raises(ArchiveError, match=r"describes 'web1-20261122T030000Z\.tar\.zst'"):
        sidecar.parse(json.dumps(GOOD), expected_name="web1-20261123T030000Z.tar.zst")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_has_not_is_refused(constant):
    """An outside review: ``"duration": NaN`` passed the schema (every comparison with
    NaN is false, so ``minimum`` held) and reached the reports."""
    text = json.dumps({**GOOD, "duration": 12345.5}).replace("12345.5", constant)
    assert f'"duration": {constant}' in text
    with pytest.raises(ArchiveError, match=f"not valid JSON: {constant} is not a JSON number"):
        sidecar.parse(text)


def test_failed_service_names_are_words_the_server_can_use():
    data = json.loads(json.dumps(GOOD))
    data["services"][0]["name"] = "db,partial\n[web2] stored " + "x" * 300
    parsed = sidecar.parse(json.dumps(data))
    (name,) = parsed.failed_services
    assert name.startswith("db_partial__web2__stored_x") and len(name) == 128


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("archive", "content_bytes"), 10**400),
        (("archive", "size"), 2**63),
        (("duration",), 1e400),
        (("archive", "name"), "web1-20261122T030000Z.tar.zst\n"),
        (("stamp",), "20261122T030000Z\n"),
        (("host",), "web1\n"),
        (("archive", "name"), "web1-2026112\u0662T030000Z.tar.zst"),
    ],
)
def test_numbers_and_names_the_server_cannot_use_are_refused(path, value):
    data = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ArchiveError, match="sidecar is malformed"):
        sidecar.from_data(data)


def test_a_sidecar_of_a_million_wrong_items_is_refused_by_its_first_errors():
    """8 MiB of invalid services once took 36.6 s of schema checking (every error was
    collected); now the item counts are bounded and only the first errors are looked at."""
    data = json.loads(json.dumps(GOOD))
    data["services"] = [{"name": 7}] * 200_000
    with pytest.raises(ArchiveError, match=r"sidecar is malformed at services: .* is too long"):
        sidecar.from_data(data)
    data["services"] = [{"name": 7, "status": "ok"}] * 900  # within maxItems, all wrong
    with pytest.raises(ArchiveError, match=r"sidecar is malformed at services/\d+/name"):
        sidecar.from_data(data)


@pytest.mark.parametrize(
    ("stamp", "said"),
    [
        ("20261306T174932Z", "is not a time"),
        ("20261399T999999Z", "is not a time"),
        ("20261105T174932Z", "not the one in its archive's name"),
    ],
)
def test_a_stamp_that_is_no_time_or_not_the_name_s_is_refused(stamp, said):
    """helper-134 F6: the stamp was checked against its pattern alone; the server's
    parse of month 13 then failed every pull of the host as an internal error. Now the
    sidecar is malformed, and passed over as a bad one."""
    from tests.helpers.archives import listed_sidecar

    name = "web1-20261206T174932Z.tar.zst"
    data = json.loads(listed_sidecar(name, "20261206T174932Z").to_json())
    data["stamp"] = stamp
    with pytest.raises(ArchiveError, match=said):
        sidecar.from_data(data, expected_name=name)


@pytest.mark.parametrize(
    ("status", "error", "archived"),
    [
        (Status.OK, None, True),
        (Status.FAILED, sidecar.PARTIAL_DUMP + "1 of 2 databases", True),
        (Status.FAILED, "dump failed: boom", False),
        (Status.FAILED, None, False),
        (Status.SKIPPED, "skipped: not configured", False),
    ],
)
def test_a_task_is_archived_when_its_dump_wrote_all_or_part_of_it(status, error, archived):
    """The one rule for "the archive holds this task's data", read by the client's run
    (publish a run where only a partial dump succeeded) and by its staging."""
    assert sidecar.TaskReport("postgresql", status, error).archived is archived


def test_a_task_keeps_a_thousand_warnings_and_the_sidecar_counts_them_all():
    """A user who may write below a listed path makes a warning per entry at will
    (60,000 hard links past max_holes_and_links): a task keeps 1,000 and counts the rest,
    and the sidecar's 20 and "... and N more" still count every one."""
    from pullback.common.archive.stats import MAX_TASK_WARNINGS, TaskStats

    first, second = TaskStats(), TaskStats()
    for i in range(1500):
        first.warnings.append(f"/home/u/l{i}: a hard link, left out")
    second.warnings.append("/srv/x: vanished before it could be read")
    second.add(first)
    lines = second.warning_lines()
    assert len(second.warnings) == MAX_TASK_WARNINGS == len(lines) - 1
    assert lines[-1] == "... and 501 more warnings like these"
    written = sidecar.parse(json.dumps(GOOD))
    written.services[0].tasks[0].warnings = lines  # (as the client's run reports them)
    shown = json.loads(written.to_json())
    assert sidecar.parse(written.to_json())  # (every reader takes what was written)
    warnings = shown["services"][0]["tasks"][0]["warnings"]
    assert len(warnings) == 21 and warnings[-1] == "... and 1481 more"
