"""Broken configuration files: every one is reported as file:line: key: what was expected."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

from pullback.client.config import load_client_config
from pullback.common.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "client.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_client_config(path)
    assert info.value.exit_code == 2
    return [str(p) for p in info.value.problems]


def test_enum_error_names_file_line_key_and_choices(tmp_path):
    path = write(tmp_path, "hostname: web1\n" + "\n" * 5 + "compression: lzma\n")
    assert problems_of(path) == [f"{path}:7: compression: 'lzma' is not one of zstd, gzip, none"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "incremental: {enabled: maybe}",
            "incremental.enabled: 'maybe' is not one of true, false, auto",
        ),
        ("incremental:", "incremental: expected a mapping, got nothing (null)"),
        (
            "incremental: {full_ratio: 1e9}",
            "incremental.full_ratio: expected a number, got a string '1e9' (YAML reads a "
            "number like 1e9 as text: write 1000000000 or 1.0e+9)",
        ),
    ],
    ids=["yaml-words", "null", "exponent"],
)
def test_what_a_newcomer_got_wrong_is_said_in_yaml_words(tmp_path, text, said):
    """Found by a newcomer: choices in Python's spelling ([True, False, 'auto']), "got
    nothing (null) None", and 1e9 (text to YAML 1.1) refused as a string without a word
    why. (A zero ``full_every`` is test_full_every_needs_hours_days_or_weeks's.)"""
    path = write(tmp_path, text + "\n")
    assert problems_of(path) == [f"{path}:1: {said}"]


def test_wrong_type(tmp_path):
    path = write(tmp_path, "keep_last: three\n")
    assert problems_of(path) == [f"{path}:1: keep_last: expected an integer, got a string 'three'"]


def test_unknown_key_suggests_the_near_one(tmp_path):
    path = write(tmp_path, "archive_dir: /srv/a\ncompresion: zstd\n")
    assert problems_of(path) == [f"{path}:2: compresion: unknown key (did you mean 'compression'?)"]


def test_every_problem_is_reported_in_line_order(tmp_path):
    path = write(tmp_path, "keep_days: -1\nservice_dirs: [relative/dir]\nbogus: 1\n")
    found = problems_of(path)
    assert [p.split(":")[1] for p in found] == ["1", "2", "3"]
    assert (
        "service_dirs[0]: expected an absolute path without . or .. (names of at most 255 "
        "characters), got 'relative/dir'" in found[1]
    )


def test_list_item_line_is_its_own(tmp_path):
    path = write(tmp_path, "service_dirs:\n  - /ok\n  - /fine\n  - 42\n")
    assert problems_of(path) == [
        f"{path}:4: service_dirs[2]: expected an absolute path "
        "without . or .. (names of at most 255 characters), "
        f"got 42"
    ]


def test_bad_size(tmp_path):
    path = write(tmp_path, "min_free_space: lots\n")
    assert problems_of(path) == [
        f"{path}:1: min_free_space: expected a size like 512M or 2G, got 'lots'"
    ]


def test_bad_yaml_syntax(tmp_path):
    path = write(tmp_path, "hostname: web1\nservice_dirs: [/a, /b\nkeep_last: 2\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3: YAML syntax error")
    # where the unclosed sequence began, too: the line an editor should look at first
    assert problem.endswith("(while parsing a flow sequence, which began at line 2)"), problem


def test_an_unclosed_quote_says_where_it_began(tmp_path):
    path = write(tmp_path, 'hostname: "web1\nkeep_last: 2\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:3: YAML syntax error: found unexpected end of stream")
    assert "which began at line 1" in problem, problem


def test_tab_indentation(tmp_path):
    path = write(tmp_path, "service_dirs:\n\t- /etc/pullback/services\n")
    assert problems_of(path) == [f"{path}:2: a tab character: YAML must be indented with spaces"]


def test_duplicate_key(tmp_path):
    path = write(tmp_path, "keep_last: 3\nkeep_days: 2\nkeep_last: 4\n")
    assert problems_of(path) == [f"{path}:3: keep_last: duplicate key (first given on line 1)"]


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert problems_of(path) == [f"{path}:1: expected a mapping of keys at the top level"]


def test_missing_file(tmp_path):
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_directory_instead_of_file(tmp_path):
    assert problems_of(tmp_path) == [f"{tmp_path}: is a directory, expected a file"]


def test_not_utf8(tmp_path):
    path = tmp_path / "client.yaml"
    path.write_bytes(b"hostname: web1\nkeep_last: \xff\n")
    assert problems_of(path) == [f"{path}:2: not valid UTF-8 text"]


@contextlib.contextmanager
def _as_nobody():
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_file():
    # Root reads anything, so when root the check runs with the effective uid of nobody.
    directory = Path(tempfile.mkdtemp(prefix="pullback-unreadable-"))
    try:
        directory.chmod(0o755)
        path = directory / "client.yaml"
        path.write_text("keep_last: 2\n")
        path.chmod(0o000)
        context = _as_nobody() if os.geteuid() == 0 else contextlib.nullcontext()
        with context:
            found = problems_of(path)
        assert found == [
            f"{path}: permission denied: cannot read the file (pullback's commands run as "
            "root: use sudo)"
        ]
    finally:
        path.unlink()
        directory.rmdir()


def test_empty_client_config_means_defaults(tmp_path):
    path = write(tmp_path, "# everything commented out\n")
    config = load_client_config(path)
    assert config.compression == "zstd"
    assert config.keep_last == 3
    assert str(config.archive_dir) == "/var/lib/pullback/archives"
    assert config.min_free_space == 512 * 1024 * 1024


def test_gzip_level_range(tmp_path):
    path = write(tmp_path, "compression: gzip\ncompression_level: 12\n")
    assert problems_of(path) == [f"{path}:2: compression_level: gzip levels are 1-9, got 12"]


def test_cli_prints_problems_and_exits_2_without_traceback(tmp_path, capsys):
    from pullback.client.cli import main

    path = write(tmp_path, "compression: lzma\n")
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: compression: 'lzma' is not one of" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("value", "shown"),
    [("7", "7"), ("0d", "'0d'"), ("1.5d", "'1.5d'"), ("10m", "'10m'"), ("7 days", "'7 days'")],
)
def test_full_every_needs_hours_days_or_weeks(tmp_path, value, shown):
    """A bare number means seconds elsewhere: ``full_every: 7`` made every archive a full
    one and ``check`` said ok (found by an outside tester). It is refused, exit 2."""
    path = write(tmp_path, f"hostname: web1\nincremental:\n  full_every: {value}\n")
    assert problems_of(path) == [
        f"{path}:3: incremental.full_every: expected a whole number (1 or more) of hours, "
        f"days or weeks, like 7d, got {shown}"
    ]


@pytest.mark.parametrize("value", ["36h", "7d", "2w", " 1d "])
def test_full_every_takes_its_units(tmp_path, value):
    from pullback.common.units import parse_duration

    path = write(tmp_path, f"hostname: web1\nincremental:\n  full_every: '{value}'\n")
    config = load_client_config(path)
    assert config.incremental.full_every == parse_duration(value)


def test_a_relative_cache_dir_is_refused(tmp_path):
    """Under the unit a relative cache_dir failed later, in garbled words (found by an
    outside tester); it is a config error: file, line, key, exit 2."""
    path = write(tmp_path, "hostname: web1\nincremental:\n  cache_dir: var/cache/pullback\n")
    assert problems_of(path) == [
        f"{path}:3: incremental.cache_dir: expected an absolute path "
        "without . or .. (names of at most 255 characters), "
        f"got 'var/cache/pullback'"
    ]


@pytest.mark.parametrize(
    "option", ["--ignore-inode", "--ignore-ctime", "--repo=/x", "--insecure-tls", "--cacert=/ca"]
)
def test_backup_options_that_would_keep_stale_bytes_are_refused(tmp_path, option):
    from pullback.server.config import load_server_config

    path = write(
        tmp_path,
        "hosts: [{name: web1}]\nbackend:\n  type: restic\n"
        f"  backup_options: [--exclude-caches, '{option}']\n",
        "server.yaml",
    )
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    (problem,) = [str(p) for p in info.value.problems]
    assert problem.startswith(f"{path}:4: backend.backup_options[1]:"), problem
    assert "skip files by size and mtime alone" in problem


@pytest.mark.parametrize(
    ("fragment", "written_as"),
    [
        ("_path.yaml", "[^/]{0,255})+$"),
        ("_duration.yaml", r"\\d+(\\.\\d+)?\\s*[smhdw]?"),
        ("_size.yaml", r"[KMGTPkmgtp]i?[Bb]?"),
    ],
)
def test_every_schema_takes_its_paths_durations_and_sizes_from_one_definition(fragment, written_as):
    """The pattern of an absolute path, a duration or a size and its error words live in
    one fragment each (``x-include: path``, ``duration``, ``size``): a copy that drifted
    would accept in one file what another refuses (or what the parser of its value,
    keyed on the pattern, does not parse), or word the same error two ways."""
    root = Path(__file__).resolve().parents[2]
    written = {
        p.name
        for d in ("common/schemas", "plugins/schemas")
        for p in (root / d).glob("*.yaml")
        if written_as in p.read_text()
    }
    assert written == {fragment}


def test_a_shared_definition_keeps_the_keys_beside_it():
    from pullback.common.schema import _NUMBER_PARSERS, load_schema
    from pullback.common.units import DURATION_PATTERN, SIZE_PATTERN

    pattern = "^(?:/(?!\\.{1,2}(?:/|$))[^/]{0,255})+$"
    docker = load_schema("pullback.plugins", "docker")["properties"]["compose_file"]
    assert docker["pattern"] == pattern and docker["type"] == "string"
    assert docker["description"].startswith("Alias of docker_compose_path")
    assert (
        docker["x-expected"] == "an absolute path without . or .. (names of at most 255 characters)"
    )
    client = load_schema("pullback.common", "client")["properties"]
    assert client["min_interval"]["pattern"] == DURATION_PATTERN in _NUMBER_PARSERS
    assert client["min_interval"]["x-expected"] == "a duration like 20h"
    assert client["min_free_space"]["pattern"] == SIZE_PATTERN in _NUMBER_PARSERS
    assert client["min_free_space"]["type"] == ["string", "integer"]
    server = load_schema("pullback.common", "server")
    assert server["$defs"]["size"]["minimum"] == 1
    assert server["$defs"]["duration"]["x-expected"] == "a duration like 90s, 15m or 6h"


@pytest.mark.parametrize("value", ["0", "0s", "0.0h", 0, 0.0])
def test_a_timeout_of_nothing_is_refused_as_text_or_number(tmp_path, value):
    """A timeout of 0 would end every command at once (helper-126: check said ok, then
    every run failed); JSON Schema judges only numbers by a minimum, pullback its text
    too. A run_timeout of 0 still means no limit."""
    path = write(tmp_path, f"hostname: web1\nnotify:\n  timeout: {value!r}\n".replace("'", '"'))
    assert problems_of(path) == [
        f"{path}:3: notify.timeout: expected a duration more than 0, like 90s, 15m or 6h, "
        f"got {value!r}"
    ]
    assert load_client_config(write(tmp_path, "hostname: web1\nrun_timeout: 0\n")).run_timeout == 0


@pytest.mark.parametrize("path", ["/srv/data/../other", "/srv/./data", "/srv/.."])
def test_a_path_with_a_dot_or_dot_dot_name_is_refused(tmp_path, path):
    """A files path /srv/data/../other was archived under its normal form and could not be
    restored as written (helper-126): every path setting names the real path."""
    config = write(tmp_path, f"hostname: web1\nservice_dirs: [{path}]\n")
    assert problems_of(config) == [
        f"{config}:2: service_dirs[0]: expected an absolute path without . or .. (names of "
        f"at most 255 characters), got {path!r}"
    ]


def test_an_unknown_host_is_answered_with_the_host_meant_and_a_bounded_list(tmp_path):
    """h129's R5: ``web4999`` for ``web4999.example.org`` (and the other way round, or in
    another case) names the host meant first; the known hosts are cut at 20 and counted."""
    from pullback.common.errors import UsageError
    from pullback.server.config import load_server_config

    hosts = "".join(f"  - name: web{i}.example.org\n" for i in range(100))
    path = write(tmp_path, f"state_dir: {tmp_path}\nhosts:\n{hosts}  - name: db1\n", "s.yaml")
    config = load_server_config(path)
    for typed, meant in [
        ("web99", "web99.example.org"),
        ("WEB7.Example.org", "web7.example.org"),
        ("db1.example.org", "db1"),
    ]:
        with pytest.raises(UsageError) as info:
            config.host(typed)
        assert f"no host named {typed!r} (did you mean {meant}?) in " in str(info.value)
    with pytest.raises(UsageError) as info:
        config.select_hosts(["web1", "nosuch"])
    said = str(info.value)
    assert "'web1' (did you mean web1.example.org?), 'nosuch' in" in said
    assert said.endswith(
        "known hosts: "
        + ", ".join(sorted(["db1", *(f"web{i}.example.org" for i in range(100))])[:20])
        + " and 81 more"
    )
