"""The argv of every restic and borg command, built by pure functions: plain equality."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pullback.server.backends import BackendError, SnapshotSpec, borg, restic

WHEN = dt.datetime(2026, 11, 22, 4, 50, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def test_restic_backup_is_tagged_and_timed_like_the_archive_in_utc():
    assert restic.backup_args("web1", SnapshotSpec("20261122T035000Z", WHEN)) == [
        "backup",
        "--json",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--tag",
        "20261122T035000Z",
        "--tag",
        "pullback-ctime",
        "--time",
        "2026-11-22 03:50:00",
        ".",
    ]
    # restic 0.14 checks no ctime under --ignore-inode: a same-size edit that keeps its
    # mtime would keep the parent snapshot's bytes
    assert "--ignore-inode" not in restic.backup_args("web1", SnapshotSpec("x", WHEN))


def test_a_partial_archive_makes_a_tagged_restic_snapshot():
    spec = SnapshotSpec("20261122T035000Z", WHEN, ("db", "cache"))
    args = restic.backup_args("web1", spec)
    tags = [args[i + 1] for i, a in enumerate(args) if a == "--tag"]
    assert tags == [
        "pullback",
        "20261122T035000Z",
        "pullback-ctime",
        "partial",
        "failed:db",
        "failed:cache",
    ]


def test_a_partial_archive_makes_a_commented_borg_archive():
    args = borg.create_args("web1", SnapshotSpec("20261122T035000Z", WHEN, ("db",)))
    assert args[args.index("--comment") + 1] == "partial; failed: db"
    assert borg.failed_of("partial; failed: db, cache") == ("db", "cache")
    assert borg.failed_of("made by hand") == ()


def test_restic_snapshots_of_one_host_and_only_pullbacks():
    assert restic.snapshots_args("web1") == [
        "snapshots",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--json",
    ]


def test_restic_forget_by_policy():
    policy = {"keep_daily": 7, "keep_weekly": 4, "keep_last": 0, "keep_within": "2w"}
    assert restic.forget_args("web1", policy) == [
        "forget",
        "--host",
        "web1",
        "--tag",
        "pullback",
        "--group-by",
        "host",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-within",
        "14d",
        "--json",
    ]


def test_adopted_snapshots_are_selected_by_host_and_tag_and_forgotten_as_one_series():
    selection = ["--host", "web1", "--host", "web1.example.org"]
    selection += ["--tag", "pullback", "--tag", "web1.example.org"]
    assert restic.snapshots_args("web1", "web1.example.org") == [
        "snapshots",
        *selection,
        "--json",
    ]
    args = restic.forget_args("web1", {"keep_last": 3}, "web1.example.org")
    assert args == ["forget", *selection, "--group-by", "", "--keep-last", "3", "--json"]
    # the same name: one --host
    assert restic.snapshots_args("web1", "web1")[1:5] == ["--host", "web1", "--tag", "pullback"]


def test_a_policy_that_keeps_nothing_is_refused():
    with pytest.raises(BackendError, match="keeps nothing"):
        restic.policy_args({"keep_daily": 0})


@pytest.mark.parametrize(("value", "restic_value"), [("2w", "14d"), ("36h", "36h"), ("1y", "1y")])
def test_keep_within_in_restic_units(value, restic_value):
    assert restic.within_to_restic(value) == restic_value


def test_restic_check_reads_a_rotating_part_or_everything():
    assert restic.check_args(3, 8) == ["check", "--read-data-subset=3/8"]
    assert restic.check_args(1, 1) == ["check", "--read-data"]
    assert restic.check_args(1, 2, ["--with-cache"]) == [
        "check",
        "--read-data-subset=1/2",
        "--with-cache",
    ]


def test_restic_restore_includes_are_rooted():
    assert restic.restore_args("abcd1234", Path("/t"), ["services/app/", "MANIFEST.sha256"]) == [
        "restore",
        "abcd1234",
        "--target",
        "/t",
        "--include",
        "/services/app",
        "--include",
        "/MANIFEST.sha256",
    ]


def test_restic_times_with_nanoseconds_and_offsets():
    assert restic.parse_time("2026-11-22T03:50:00.123456789Z") == dt.datetime(
        2026, 11, 22, 3, 50, 0, 123456, tzinfo=dt.UTC
    )
    assert restic.parse_time("2026-11-22T04:50:00+01:00") == WHEN
    with pytest.raises(BackendError):
        restic.parse_time("yesterday")


def test_borg_create_names_the_archive_after_host_and_stamp():
    assert borg.create_args("web1", SnapshotSpec("20261122T035000Z", WHEN)) == [
        "create",
        "--json",
        "--log-json",
        "--files-cache=ctime,size",
        "--numeric-ids",
        "--timestamp",
        "2026-11-22T03:50:00",
        "::web1-20261122T035000Z",
        "services",
        "MANIFEST.sha256",
        "SIDECAR.json",
        "TREE.list",
    ]


def test_borg_lock_wait_goes_after_the_subcommand():
    assert borg.with_lock_wait(["delete", "::a", "b"], 1800.7) == [
        "delete",
        "--lock-wait",
        "1800",
        "::a",
        "b",
    ]


def test_borg_list_delete_check_extract_init():
    assert borg.list_args("web1") == [
        "list",
        "--json",
        "--format",
        "{comment}",
        "--glob-archives",
        "web1-*",
    ]
    assert borg.delete_args(["web1-a", "web1-b"]) == ["delete", "::web1-a", "web1-b"]
    assert borg.check_args(3600.0) == [
        ["check", "--repository-only", "--max-duration", "3600"],
        ["check", "--archives-only", "--last", "1"],
    ]
    assert borg.extract_args("web1-x", ["services/app"]) == [
        "extract",
        "--sparse",
        "--numeric-ids",
        "::web1-x",
        "services/app",
    ]
    assert borg.init_args() == ["init", "--encryption=repokey-blake2", "--make-parent-dirs"]


# -- the backends run what the builders build, and say failures in words ------------------


@pytest.fixture
def server_config(tmp_path):
    from tests.helpers.status_servers import one_host_config

    return one_host_config(tmp_path)


def backend_of(kind: str, config, runner, lock_wait: float = 1800.0):
    import dataclasses

    from pullback.server.backends import make_backend

    backend = dataclasses.replace(config.backend, type=kind)
    return make_backend(backend, config.host("web1"), config.state_dir, runner, lock_wait)


def failure(*tail: str, code: int = 1):
    from pullback.common.errors import CommandError

    return CommandError("tool", code, list(tail))


def test_restic_store_runs_backup_args_and_reads_the_summary(server_config, tmp_path):
    from tests.helpers.fakes import ScriptedRunner

    summary = (
        b'{"message_type":"status"}\n'
        b'{"message_type":"summary","snapshot_id":"0123456789ab","data_added":77}\n'
    )
    runner = ScriptedRunner(summary)
    spec = SnapshotSpec("20261122T035000Z", WHEN)
    stored = backend_of("restic", server_config, runner).store(tmp_path, spec, 600)
    assert runner.calls == [["restic", *restic.backup_args("web1", spec)]]
    assert (stored.snapshot_id, stored.bytes_added) == ("01234567", 77)


def test_borg_waits_for_its_lock_on_every_command(server_config):
    from tests.helpers.fakes import ScriptedRunner

    runner = ScriptedRunner()
    backend_of("borg", server_config, runner, lock_wait=90).prune()
    assert runner.calls == [["borg", "compact", "--lock-wait", "90"]]


@pytest.mark.parametrize(
    ("kind", "tail"),
    [
        ("restic", "Fatal: wrong password or no key found"),
        (
            "borg",
            "passphrase supplied in BORG_PASSPHRASE, by BORG_PASSCOMMAND or via "
            "BORG_PASSPHRASE_FD is incorrect.",
        ),
    ],
)
def test_a_wrong_password_is_said_so(server_config, kind, tail):
    from tests.helpers.fakes import ScriptedRunner

    backend = backend_of(kind, server_config, ScriptedRunner(failure(tail)))
    with pytest.raises(BackendError, match=f"wrong password for the {kind} repository"):
        backend.prepare()


def test_a_restic_repository_without_keys_is_not_said_to_be_a_wrong_password(server_config):
    """restic says "wrong password or no key found" for both: a local repository's keys/
    tells which; a remote one's message names the other possibility."""
    import dataclasses

    from pullback.server.backends import make_backend
    from tests.helpers.fakes import ScriptedRunner

    tail = "Fatal: wrong password or no key found"
    backend = backend_of("restic", server_config, ScriptedRunner(failure(tail)))
    repository = Path(backend.repository())
    (repository / "keys").mkdir(parents=True)
    (repository / "config").write_bytes(b"x")
    with pytest.raises(BackendError) as keyless:
        backend.snapshots()
    assert f"the restic repository {repository} holds no key" in str(keyless.value)
    assert "wrong password for" not in str(keyless.value)

    (repository / "keys" / ("0" * 64)).write_bytes(b"{}")
    backend = backend_of("restic", server_config, ScriptedRunner(failure(tail)))
    with pytest.raises(BackendError) as refused:
        backend.snapshots()
    assert str(refused.value) == (
        f"wrong password for the restic repository {repository} "
        f"(password_file {backend.password_file})"
    )

    host = dataclasses.replace(server_config.host("web1"), repository="rest:http://[::1]:9/web1/")
    remote = make_backend(
        server_config.backend, host, server_config.state_dir, ScriptedRunner(failure(tail)), 1.0
    )
    with pytest.raises(BackendError) as either:
        remote.snapshots()
    assert str(either.value).startswith("wrong password for the restic repository rest:")
    assert "or it holds no key" in str(either.value)


@pytest.mark.parametrize(
    ("kind", "tail", "said"),
    [
        (
            "restic",
            [
                "subprocess ssh: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
                "subprocess ssh: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!",
                "subprocess ssh: Host key for store.local has changed and you have requested "
                "strict checking.",
                "subprocess ssh: Host key verification failed.",
                "Fatal: unable to open repository at sftp:store:/srv/web1: unable to start "
                "the sftp session, error: EOF",
            ],
            "restic failed on .*: unable to open repository at sftp:store:/srv/web1: unable "
            r"to start the sftp session, error: EOF \(over ssh: Host key for store.local has "
            r"changed and you have requested strict checking.; Host key verification "
            r"failed.\)$",
        ),
        (
            "borg",
            [
                "Remote: Host key verification failed.",
                "Connection closed by remote host. Is borg working on the server?",
            ],
            "borg failed on .*: Connection closed by remote host. Is borg working on the "
            r"server\? \(over ssh: Host key verification failed.\)$",
        ),
        ("borg", ["Remote: Permission denied (publickey)."], r"\(publickey\).$"),
    ],
)
def test_what_ssh_said_on_the_way_to_a_store_is_in_the_failure(server_config, kind, tail, said):
    """An outside walk: a store whose host key changed failed as restic's bare "unable to
    start the sftp session, error: EOF"; ssh's own words were dropped."""
    from tests.helpers.fakes import ScriptedRunner

    backend = backend_of(kind, server_config, ScriptedRunner(failure(*tail)))
    with pytest.raises(BackendError, match=said) as raised:
        backend.snapshots()
    assert str(raised.value).count("Permission denied") <= 1


def test_half_of_borgs_password_sentence_is_not_a_wrong_password(server_config):
    from tests.helpers.fakes import ScriptedRunner

    backend = backend_of("borg", server_config, ScriptedRunner(failure("file is incorrect")))
    with pytest.raises(BackendError, match=r"borg failed on .*: file is incorrect"):
        backend.prepare()


def test_a_missing_repository_is_created_only_when_allowed(server_config):
    import dataclasses

    from pullback.server.backends import RepositoryMissing
    from tests.helpers.fakes import ScriptedRunner

    missing = failure("Fatal: unable to open config file: stat /r/config: no such file")
    runner = ScriptedRunner(missing, missing)
    backend_of("restic", server_config, runner).prepare()
    # looked for again under the init lock (another host of its group may have made it)
    probe = ["restic", "cat", "config"]
    assert runner.calls == [probe, probe, ["restic", "init"]]
    # made by another host of the group while this one waited for the lock: no init
    runner = ScriptedRunner(missing)
    backend_of("restic", server_config, runner).prepare()
    assert runner.calls == [probe, probe]
    no_init = dataclasses.replace(
        server_config, backend=dataclasses.replace(server_config.backend, init=False)
    )
    with pytest.raises(RepositoryMissing, match=r"backend\.init is false"):
        backend_of("restic", no_init, ScriptedRunner(missing)).prepare()


def test_a_live_restic_lock_is_waited_for_then_named(server_config):
    from pullback.server.backends import RepositoryLocked
    from tests.helpers.fakes import ScriptedRunner

    locked = failure(
        "unable to create lock in backend: repository is already locked by PID 42 on db1 by root"
    )
    # prune fails on the lock; restic list locks shows one lock before and after unlock
    runner = ScriptedRunner(locked, b"abcd\n", b"", b"abcd\n")
    backend = backend_of("restic", server_config, runner, lock_wait=0)
    with pytest.raises(RepositoryLocked, match=r"locked by a live process \(by PID 42 on db1"):
        backend.prune()
    assert [c[1] for c in runner.calls] == ["prune", "list", "unlock", "list"]


def test_backup_options_are_passed_as_they_are_before_the_paths():
    spec = SnapshotSpec("20261122T035000Z", WHEN)
    extra = ("--exclude-caches", "--compression", "max")
    args = restic.backup_args("web1", spec, extra)
    assert args[-4:] == ["--exclude-caches", "--compression", "max", "."]
    created = borg.create_args("web1", spec, ("--exclude-caches",))
    assert created[created.index("::web1-20261122T035000Z") - 1] == "--exclude-caches"


@pytest.mark.parametrize(
    ("said", "words"),
    [
        ("unexpected HTTP response (401): 401 Unauthorized", "401 Unauthorized"),
        ("client.Head: dial tcp 127.0.0.1:1: connect: connection refused", "connection refused"),
        ("Stat: Access Denied.", "Access Denied"),  # S3 without credentials
    ],
)
def test_a_refused_login_or_a_server_down_is_not_a_missing_repository(server_config, said, words):
    """restic asks "Is there a repository at the following location?" after any failure
    to open one: only a missing config file means "none yet" (and may be initialised)."""
    from pullback.server.backends import BackendError, RepositoryMissing
    from tests.helpers.fakes import ScriptedRunner

    runner = ScriptedRunner(
        failure(
            f"Fatal: unable to open config file: {said}",
            "Is there a repository at the following location?",
            "rest:http://puller:***@store:8000/web1/",
        )
    )
    with pytest.raises(BackendError) as info:
        backend_of("restic", server_config, runner).prepare(create=True)
    assert not isinstance(info.value, RepositoryMissing)
    assert runner.calls == [["restic", "cat", "config"]], "never restic init"
    assert str(info.value).endswith(f"unable to open config file: {said}")
    assert words in str(info.value)


def test_a_missing_repository_asked_for_without_a_pull_says_so(server_config):
    from pullback.server.backends import RepositoryMissing
    from tests.helpers.fakes import ScriptedRunner

    runner = ScriptedRunner(failure("Fatal: unable to open config file: <config/> does not exist"))
    with pytest.raises(RepositoryMissing, match=r"does not exist yet \(no pull has stored to it\)"):
        backend_of("restic", server_config, runner).prepare(create=False)


def test_the_first_store_after_the_upgrade_reads_every_file():
    spec = SnapshotSpec("20261122T035000Z", WHEN, read_all=True)
    args = restic.backup_args("web1", spec, ["--exclude-caches"])
    assert args[-3:] == ["--force", "--exclude-caches", "."]


def test_restics_count_of_errors_is_said_with_the_first_error(tmp_path):
    """An outside test: a drill of a damaged pack said "There were 1 errors"; what the
    error was ("ciphertext verification failed") was only in INFO lines."""
    from pullback.common.errors import CommandError
    from pullback.common.log import get_logger
    from pullback.common.runner import Runner
    from pullback.server.backends import make_backend
    from tests.helpers.status_servers import one_host_config

    config = one_host_config(tmp_path)
    backend = make_backend(
        config.backend, config.host("web1"), config.state_dir, Runner(get_logger("t")), 1
    )
    tail = [
        "restoring <Snapshot 3826e3e3 of [/s]> to /scratch/web1",
        "ignoring error for /services/app/big.bin: ciphertext verification failed",
        "ignoring error for /services/app/other.bin: ciphertext verification failed",
        "Fatal: There were 2 errors",
    ]
    said = backend.said(CommandError("restic restore", 1, tail))
    assert said == (
        "Fatal: There were 2 errors (the first: ignoring error for /services/app/big.bin: "
        "ciphertext verification failed)"
    )
    assert backend.said(CommandError("restic check", 1, ["Fatal: wrong password"])) == (
        "Fatal: wrong password"
    )


def test_selects_is_what_selection_args_ask_restic_for():
    from pullback.server.backends.restic import selects

    ours = {"hostname": "web1", "tags": ["pullback", "20261101T030000Z"]}
    suite = {"hostname": "web1.example.org", "tags": ["web1.example.org", "20261101_030000"]}
    assert selects(ours, "web1") and selects(ours, "web1", "web1.example.org")
    assert not selects(suite, "web1") and not selects(suite, "web1", "web1")
    assert selects(suite, "web1", "web1.example.org")
    untagged = {"hostname": "web1.example.org", "tags": None}
    assert not selects(untagged, "web1", "web1.example.org")


def test_few_names_five_and_counts_the_rest():
    from pullback.common.text import few

    assert few(["a"]) == "a"
    assert few(list("abcde")) == "a, b, c, d, e"
    assert few(list("abcdefg")) == "a, b, c, d, e and 2 more"


def test_a_restic_panic_is_said_as_a_crash_with_the_error_before_it(tmp_path):
    """An outside walk: a REST store stopped mid-backup made restic 0.14 panic, and the
    failure read "created by golang.org/x/sync/errgroup.(*Group).Go", the trace's end."""
    from pullback.common.errors import CommandError
    from pullback.common.log import get_logger
    from pullback.common.runner import Runner
    from pullback.server.backends import make_backend
    from tests.helpers.status_servers import one_host_config

    config = one_host_config(tmp_path)
    backend = make_backend(
        config.backend, config.host("web1"), config.state_dir, Runner(get_logger("t")), 1
    )
    tail = [  # what the runner keeps of it: the frames and goroutine headers are left out
        "Save(<data/2b9e1c>) returned error, retrying after 552ms: Post "
        '"http://store:8000/web1/data/2b9e1c": dial tcp 127.0.0.1:8000: connect: '
        "connection refused",
        "panic: runtime error: invalid memory address or nil pointer dereference",
        "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x8b5b12]",
        "",
        "created by golang.org/x/sync/errgroup.(*Group).Go",
    ]
    error = backend.explain(CommandError("restic backup", 2, tail))
    words = str(error)
    assert "created by" not in words, words
    assert words.endswith(
        "restic crashed (panic: runtime error: invalid memory address or nil pointer "
        "dereference) after: Save(<data/2b9e1c>) returned error, retrying after 552ms: Post "
        '"http://store:8000/web1/data/2b9e1c": dial tcp 127.0.0.1:8000: connect: '
        "connection refused"
    ), words


def test_restic_forget_removes_exactly_the_planned_ids():
    """forget asks restic's policy with --dry-run first, then removes those ids."""
    assert restic.forget_ids_args(["a1b2c3d4", "e5f6a7b8"]) == ["forget", "a1b2c3d4", "e5f6a7b8"]


def test_borgs_warnings_are_said_in_three_short_printable_lines():
    """borg's warnings name staged files, which a client named: the report keeps the
    last MAX_WARNED_LINES of them, each of at most MAX_WARNED_LINE characters, with no
    line breaks or terminal escapes of their own."""
    from pullback.common.runner import CommandResult
    from pullback.server.backends.borg import MAX_WARNED_LINE, create_warnings

    hostile = "services/app/" + "\x1b[2J\nforged line " * 1000 + ": changed while read"
    tail = [f"line {i}" for i in range(17)] + ["", hostile, "last"]
    said = create_warnings(CommandResult("borg create", 1, 1.0, tail))
    assert "line 15" not in said and "line 16; " in said and said.endswith("; last")
    assert "\n" not in said and "\x1b" not in said and "\\x1b[2J\\nforged" in said
    assert len(said) < 200 + 3 * MAX_WARNED_LINE
    nothing = create_warnings(CommandResult("borg create", 1, 1.0, []))
    assert nothing.endswith("what they name: (none said)")


def test_borgs_records_say_its_warnings_and_errors_alone():
    """``borg create --log-json``: a warning is one line, however many newlines a staged
    name in it holds (the runner escapes it, below); an error's traceback a line each; a
    listed file is logged, not kept; progress is nothing; a line that is no record is
    kept as it is."""
    import json

    from pullback.server.backends.borg import said_by_borg

    def record(**fields) -> str:
        return json.dumps(fields)

    warned = record(
        type="log_message",
        levelname="WARNING",
        message="services/a/x\nMANIFEST.sha256: forged: [Errno 13] Permission denied",
    )
    assert said_by_borg(warned) == [
        ("services/a/x\nMANIFEST.sha256: forged: [Errno 13] Permission denied", True)
    ]
    failed = record(type="log_message", levelname="ERROR", message="Traceback\nOSError: x")
    assert said_by_borg(failed) == [("Traceback", True), ("OSError: x", True)]
    listed = record(type="file_status", status="A", path="services/a/b\nforged")
    assert said_by_borg(listed) == [("A services/a/b\nforged", False)]
    info = record(type="log_message", levelname="INFO", message="Initializing")
    assert said_by_borg(info) == [("Initializing", False)]
    assert said_by_borg(record(type="progress_message", message="Saving files cache")) == []
    assert said_by_borg(record(type="archive_progress", finished=True)) == []
    for line in ("Remote: Broken pipe", "[1, 2]", ""):
        assert said_by_borg(line) == [(line, True)]


def test_borgs_records_are_masked_before_they_are_escaped(caplog):
    """A secret holding a character that is not printable is masked in a record's words
    (escaped first, it was ``se\\x01cret`` and no longer the secret); a warning naming
    a file with a newline stays one line in the failure's tail."""
    import json
    import logging

    from pullback.common.runner import CommandError, Runner
    from pullback.server.backends.borg import said_by_borg

    secret = "se\x01cret-\u00e4"
    caplog.set_level(logging.DEBUG, logger="pullback.test")
    runner = Runner(logging.getLogger("pullback.test"), secrets=[secret])
    lines = [
        json.dumps({"type": "log_message", "levelname": "WARNING", "message": m})
        for m in (f"the key is {secret}", "services/a/x\nforged: [Errno 13] denied")
    ]
    script = 'printf \'%s\\n\' "$1" "$2" >&2; exit 2'
    with pytest.raises(CommandError) as raised:
        runner.run(["sh", "-c", script, "sh", *lines], reword=said_by_borg)
    said = str(raised.value) + caplog.text
    assert "the key is ******" in said
    assert "se\\x01cret" not in said and secret not in said
    assert raised.value.tail[-1] == "services/a/x\\nforged: [Errno 13] denied"
