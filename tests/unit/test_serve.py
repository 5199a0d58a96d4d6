"""The serve endpoint answers four requests and refuses everything else."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pullback.client.config import load_client_config
from pullback.client.serve import serve
from pullback.common import protocol
from pullback.common.protocol import Refused, parse_request
from tests.helpers.client import ClientSandbox


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "ls",
        "list -a",
        "list; rm -rf /",
        "send",
        "send x 0",
        "send web1-20261122T030000Z.tar.zst -1",
        "send web1-20261122T030000Z.tar.zst 1e3",
        "send ../web1-20261122T030000Z.tar.zst 0",
        "send web1-20261122T030000Z.tar.zst 0 extra",
        "fetched",
        "fetched /etc/passwd",
        "fetched web1-20261122T030000Z.tar.zst yes",
        "fetched web1-20261122T030000Z.tar.zst deltas deltas",
        "fetched web1-20261122T030000Z.tar.zst Deltas",
        "fetched web1-20261122T030000Z.tar.zst lean",
        "fetched web1-20261122T030000Z.tar.zst lean-deltas deltas",
        "list\n",
        "send web1-20261122T030000Z.tar.zst 0\x00",
        "lock " * 200,
        "lïst",
        "send web1-20261122T030000Z.tar.zst 00",
    ],
)
def test_everything_but_the_four_requests_is_refused(text):
    with pytest.raises(Refused):
        parse_request(text)


def test_the_four_requests():
    assert parse_request("list").verb == "list"
    assert parse_request("lock").verb == "lock"
    send = parse_request("send web1-20261122T030000Z.tar.zst 4096")
    assert (send.verb, send.archive, send.offset) == ("send", "web1-20261122T030000Z.tar.zst", 4096)
    assert parse_request("fetched web1-20261122T030000Z.tar.gz").archive.endswith(".tar.gz")


@pytest.fixture
def box(tmp_path):
    box = ClientSandbox(tmp_path / "c", hostname="web1")
    box.write_config(fetched_keep=1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(os.urandom(5000))
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{tmp_path / 'd'}]}}\n")
    return box


def run_serve(box, text, tmp_path):
    out = tmp_path / "out"
    with open(out, "wb") as handle:
        code = serve(load_client_config(box.config), text, handle.fileno())
    return code, out.read_bytes()


def test_list_send_from_offset_and_fetched(box, tmp_path):
    import time

    assert box.cli("run").returncode == 0
    time.sleep(1.05)
    assert box.cli("run").returncode == 0
    first, second = box.published()
    (box.archives / ".incomplete-leftover.partial").write_bytes(b"x")

    code, out = run_serve(box, "list", tmp_path)
    assert code == 0
    answer = json.loads(out)
    assert answer["host"] == "web1" and answer["lock"] is None
    assert [a["name"] for a in answer["archives"]] == [first.name, second.name]
    assert answer["archives"][1]["sidecar"]["archive"]["sha256"]

    code, out = run_serve(box, f"send {second.name} 100", tmp_path)
    assert code == 0 and out == second.read_bytes()[100:]
    code, _ = run_serve(box, f"send {second.name} {second.stat().st_size + 1}", tmp_path)
    assert code == 2

    for archive in (first, second):
        assert run_serve(box, f"fetched {archive.name}", tmp_path)[0] == 0
    assert run_serve(box, f"fetched {second.name}", tmp_path)[0] == 0  # twice is fine
    # a mark only: nothing moves until the client's own run, and never the newest archive
    assert not (box.archives / "fetched").exists()
    listed = json.loads(run_serve(box, "list", tmp_path)[1])["archives"]
    assert [a["name"] for a in listed] == [first.name, second.name]
    time.sleep(1.05)
    assert box.cli("run").returncode == 0  # a newer archive: both marked ones retire
    third = box.published()[-1]
    fetched = sorted(p.name for p in (box.archives / "fetched").iterdir())
    assert fetched == [second.name, second.name + ".json"]  # fetched_keep: 1
    listed = json.loads(run_serve(box, "list", tmp_path)[1])["archives"]
    assert [a["name"] for a in listed] == [third.name]
    assert os.listdir(box.archives / ".fetched-marks") == []


def test_a_stolen_server_key_cannot_retire_the_newest_archive(box, tmp_path):
    from pullback.common.archive import directory

    assert box.cli("run").returncode == 0
    (newest,) = box.published()
    assert run_serve(box, f"fetched {newest.name}", tmp_path)[0] == 0
    directory.apply_retention(box.archives, keep_last=1, keep_days=0, fetched_keep=1)
    names = [a["name"] for a in json.loads(run_serve(box, "list", tmp_path)[1])["archives"]]
    assert names == [newest.name]  # still there for the real server to pull
    assert os.listdir(box.archives / ".fetched-marks") == [newest.name]


def test_retiring_fetched_archives_keeps_the_servers_other_marks(box, tmp_path):
    """Classic retention (``incremental.enabled: false``, or ``auto`` still waiting)
    removes the fetched marks it used up, never the mark that a server applies deltas
    nor its request for a full archive: both outlive any archive (found by an outside
    tester: switching deltas off and on again lost the server's word)."""
    import time

    from pullback.common.archive import directory

    for _ in range(2):
        assert box.cli("run").returncode == 0
        time.sleep(1.05)
    first, _second = box.published()
    assert run_serve(box, f"fetched {first.name} deltas", tmp_path)[0] == 0
    assert run_serve(box, "full", tmp_path)[0] == 0
    moved = directory.retire_marked(box.archives, keep=1)
    assert moved == [first.name]
    marks = sorted(os.listdir(box.archives / ".fetched-marks"))
    assert marks == sorted([directory.APPLIES_DELTAS, directory.WANT_FULL])
    assert directory.server_applies_deltas(box.archives)


def test_auto_makes_deltas_once_a_server_says_it_applies_them(box, tmp_path):
    """``incremental.enabled: auto`` (the default): full archives, kept as ``keep_last``
    says, while no server said it applies deltas (a server before them sends a plain
    ``fetched``); once one says so (``fetched <archive> deltas``), the next run makes a
    delta and the chain's retention takes over."""
    import time

    from pullback.common.archive import directory

    box.write_config(incremental={}, keep_last=2, keep_days=0)
    kinds, said = [], []
    for request in ("fetched {}", "fetched {}", "fetched {} deltas", None):
        result = box.cli("run")
        assert result.returncode == 0, result.stderr
        kinds.append("delta" if "delta: a delta against" in result.stderr else "full")
        said.append(result.stderr)
        if request is not None:
            newest = box.published()[-1]
            assert run_serve(box, request.format(newest.name), tmp_path)[0] == 0
        time.sleep(1.05)
    assert kinds == ["full", "full", "full", "delta"]
    dry = box.cli("run", "--dry-run")  # says what the next run makes, changes nothing
    assert dry.returncode == 0, dry.stderr
    assert "archive: a delta (a delta against " in dry.stdout, dry.stdout
    assert "archive: full (asked for with --full)" in box.cli("run", "--dry-run", "--full").stdout
    assert run_serve(box, "full", tmp_path)[0] == 0
    asked = box.cli("run", "--dry-run").stdout
    assert "archive: full (the server asked for a full archive)" in asked, asked
    assert (box.archives / ".fetched-marks" / directory.WANT_FULL).exists()  # not used up
    assert "no server has said yet that it applies deltas" in said[0]
    assert "there is no file cache" not in said[2]  # the cache was kept while waiting
    assert directory.server_applies_deltas(box.archives)
    (box.archives / ".fetched-marks" / directory.WANT_FULL).unlink()
    # the chain: the newest full archive and the delta on it, nothing older
    names = [a.name for a in directory.list_archives(box.archives)]
    assert len(names) == 2


@pytest.mark.parametrize("verify", ["manifest", "checksums"])
def test_a_server_that_applies_lean_deltas_gets_lean_ones(box, tmp_path, verify):
    """``fetched <archive> lean-deltas`` (protocol 5) leaves both marks; the next run's
    delta is lean: sidecar format 3, an unchanged file not named at all, the base's
    removed file listed in ``REMOVED.list`` (NUL-ended), a changed one restated. With
    ``verify: manifest`` the archive read back passes too (an outside review found
    every run failing there: "REMOVED.list is not listed")."""
    import tarfile
    import time

    from pullback.common.archive import directory

    data = tmp_path / "d"
    (data / "gone").write_bytes(b"x" * 100)
    (data / "kept").write_bytes(b"y" * 100)
    old = time.time() - 3600  # far from the racy window: the cache trusts them
    for name in ("f", "gone", "kept"):
        os.utime(data / name, (old, old))
    time.sleep(2.1)  # their ctimes out of the racy window too
    box.write_config(incremental={}, fetched_keep=1, verify=verify)
    assert box.cli("run").returncode == 0
    first = box.published()[-1]
    assert run_serve(box, f"fetched {first.name} lean-deltas", tmp_path)[0] == 0
    assert directory.server_applies_deltas(box.archives)
    assert directory.server_applies_lean_deltas(box.archives)
    (data / "gone").unlink()
    (data / "f").write_bytes(b"changed")
    time.sleep(1.05)
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    assert "lean delta: a delta against" in result.stderr
    delta = box.published()[-1]
    side = json.loads(delta.with_name(delta.name + ".json").read_text())
    assert side["format"] == 3 and side["archive"]["kind"] == "delta"
    assert "lean" not in side["archive"]
    plain = tmp_path / "delta.tar"
    subprocess.run(["zstd", "-q", "-d", "-o", str(plain), str(delta)], check=True)
    with tarfile.open(plain) as tar:
        names = tar.getnames()
        removed = tar.extractfile("REMOVED.list").read()
    assert not any(n.endswith("/kept") for n in names), names
    assert any(n.endswith("/f") for n in names), names
    assert names[-2:] == ["REMOVED.list", "MANIFEST.sha256"]
    assert removed.endswith(b"/gone\0") and removed.count(b"\0") == 1, removed


def test_a_client_goes_on_without_a_file_cache_it_cannot_write(box, tmp_path):
    """``auto`` before any server said it applies deltas makes full archives: a file cache
    it cannot write is a warning then, not a failed run. Once deltas are made, a delta
    needs it: the run makes a full archive without it, and says so (found by a newcomer:
    the run failed, and the day had no archive at all)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    box.write_config(incremental={"cache_dir": str(blocker / "cache")})
    waiting = box.cli("run")
    assert waiting.returncode == 0, waiting.stderr
    assert "cannot write the file cache" in waiting.stderr
    assert "the first delta waits for it" in waiting.stderr
    assert len(box.published()) == 1
    box.write_config(incremental={"enabled": True, "cache_dir": str(blocker / "cache")})
    on = box.cli("run")
    assert on.returncode == 0, on.stderr
    assert "cannot write the file cache" in on.stderr
    assert "this archive is a full one, made without it" in on.stderr
    newest = box.published()[-1]
    side = json.loads(newest.with_name(newest.name + ".json").read_text())
    assert side["archive"]["kind"] == "full" and len(box.published()) >= 2


def test_refusals_through_the_cli_exit_2(box):
    result = box.cli("serve", env={"SSH_ORIGINAL_COMMAND": "cat /etc/shadow"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "refused request 'cat /etc/shadow'" in result.stderr
    result = box.cli("serve", env={"SSH_ORIGINAL_COMMAND": "send nope-20261122T030000Z.tar 0"})
    assert result.returncode == 2 and "no archive" in result.stderr
    # one line, in words the server quotes as they are: no time and level of serve's own
    # (the server's ArchiveGone reads the end of it), said once
    (line,) = result.stderr.splitlines()
    assert line.startswith("refused request 'send nope-20261122T030000Z.tar 0' from ")
    assert line.endswith(": no archive nope-20261122T030000Z.tar")


def run_session(box, tmp_path, lines: bytes) -> tuple[int, bytes]:
    """``serve`` of a ``session`` fed ``lines`` on its standard input."""
    feed, out = tmp_path / "session-in", tmp_path / "session-out"
    feed.write_bytes(lines)
    with open(feed, "rb") as stdin, open(out, "wb") as handle:
        code = serve(load_client_config(box.config), "session", handle.fileno(), stdin.fileno())
    return code, out.read_bytes()


def read_frames(data: bytes) -> list[tuple[str, bytes]]:
    """The framed answers of a session: ("ok", bytes) or ("refused", words)."""
    answers = []
    while data:
        line, _, data = data.partition(b"\n")
        frame = protocol.parse_frame(line + b"\n")
        if frame.refused is not None:
            answers.append(("refused", frame.refused.encode()))
        else:
            answers.append(("ok", data[: frame.length]))
            data = data[frame.length :]
    return answers


def test_a_session_answers_every_request_framed_and_goes_on_after_a_refusal(box, tmp_path):
    """One process answers list, send (whole and from an offset), a refused request and
    fetched, each framed, in order; the end of its input ends it with 0."""
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    data = archive.read_bytes()
    lines = (
        "list\n"
        f"send {archive.name} 0\n"
        f"send {archive.name} 1000\n"
        "cat /etc/shadow\n"
        "send nope-20261122T030000Z.tar 0\n"
        "session\n"
        f"fetched {archive.name} deltas\n"
    )
    code, out = run_session(box, tmp_path, lines.encode())
    assert code == 0
    answers = read_frames(out)
    assert [kind for kind, _ in answers] == [
        "ok",
        "ok",
        "ok",
        "refused",
        "refused",
        "refused",
        "ok",
    ]
    assert json.loads(answers[0][1])["archives"][0]["name"] == archive.name
    assert answers[1][1] == data and answers[2][1] == data[1000:]
    assert answers[3][1] == b"unknown request"
    assert answers[4][1] == b"no archive nope-20261122T030000Z.tar"
    assert answers[5][1] == b"a session cannot open another"
    assert json.loads(answers[6][1]) == {"ok": True}
    marks = box.archives / ".fetched-marks"
    assert sorted(os.listdir(marks)) == sorted([archive.name, "server-applies-deltas"])


def test_a_session_is_bounded_in_line_length_and_requests(box, tmp_path):
    """A line past MAX_REQUEST ends the session (exit 2) without reading further; so does
    the request after MAX_SESSION_REQUESTS; a last line without its newline is dropped."""
    feed = tmp_path / "long"
    feed.write_bytes(b"list\n" + b"l" * 100_000 + b"\nlist\n")
    with open(feed, "rb") as stdin, open(tmp_path / "long-out", "wb") as handle:
        code = serve(load_client_config(box.config), "session", handle.fileno(), stdin.fileno())
        read = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)  # how far serve read its input
    assert code == 2 and [k for k, _ in read_frames((tmp_path / "long-out").read_bytes())] == ["ok"]
    assert read <= protocol.MAX_REQUEST + 2 * 4096
    code, out = run_session(box, tmp_path, b"lock\n" * (protocol.MAX_SESSION_REQUESTS + 5))
    assert code == 2 and len(read_frames(out)) == protocol.MAX_SESSION_REQUESTS
    code, out = run_session(box, tmp_path, b"lock\nlock")
    assert code == 0 and len(read_frames(out)) == 1


def test_a_session_through_the_cli(box):
    """As sshd runs it: the request in SSH_ORIGINAL_COMMAND, the lines on standard input."""
    assert box.cli("run").returncode == 0
    result = box.cli("serve", env={"SSH_ORIGINAL_COMMAND": "session"}, input="lock\nfull\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'ok 15\n{"lock": null}\nok 13\n{"ok": true}\n'
    assert (box.archives / ".fetched-marks" / "want-full").exists()


def test_a_sessions_refusals_reach_the_auth_log(box, tmp_path):
    """Each refused line of a session is logged to the auth facility, as a request of its
    own would be."""
    import logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    audit = logging.getLogger("pullback.serve.audit")
    handler = Keep()
    audit.addHandler(handler)
    try:
        run_session(box, tmp_path, b"cat /etc/shadow\nlock\n")
    finally:
        audit.removeHandler(handler)
    assert any("refused request 'cat /etc/shadow'" in r and "unknown request" in r for r in records)


def _into_its_own_directory(data):
    """F -> F/F: a file moved into a new directory of its own name."""
    os.mkdir(data / "tmp")
    os.rename(data / "F", data / "tmp" / "F")
    os.rename(data / "tmp", data / "F")


def _renamed_and_linked_back(data):
    """``mv sub sub.new; ln -s sub.new sub``: a directory renamed, a symlink at its name."""
    os.rename(data / "sub", data / "sub.new")
    os.symlink("sub.new", data / "sub")


@pytest.mark.parametrize("move", [_into_its_own_directory, _renamed_and_linked_back])
def test_a_rename_whose_old_name_the_archive_replaced_applies(box, tmp_path, move):
    """A renamed file travels as its old name's bytes only while the server still holds
    that name when the member comes; an old name the archive already replaced (by the
    new directory of the same name, or by a symlink above it) was a base mismatch, the
    replay from the full failed alike, and the day was lost (found by an outside
    review). Such a file is now read and sent as a new one; the lean delta applies onto
    the staging tree of the day before and proves the day's manifest."""
    import hashlib
    import time

    from pullback.client.restore import unpack_archive
    from pullback.common.archive import baseindex
    from pullback.common.archive.baseindex import IndexWriter
    from pullback.common.archive.manifest import MANIFEST_NAME

    data = tmp_path / "d"
    (data / "F").write_bytes(b"the file F\n" * 100)
    (data / "sub").mkdir()
    (data / "sub" / "g").write_bytes(b"g\n" * 100)
    box.write_config(incremental={}, fetched_keep=5)
    time.sleep(2.1)  # out of the racy window: the cache trusts the files
    staging = tmp_path / "staging"
    for day in (1, 2):
        if day == 2:
            move(data)
        assert box.cli("run").returncode == 0
        archive = box.published()[-1]
        side = json.loads(archive.with_name(archive.name + ".json").read_text())
        base = baseindex.take(staging) if day == 2 else None
        try:
            unpack_archive(archive, staging, base, IndexWriter(staging))
        finally:
            if base is not None:
                base.close()
        written = (staging / MANIFEST_NAME).read_bytes()
        assert hashlib.sha256(written).hexdigest() == side["archive"]["manifest_sha256"]
        assert run_serve(box, f"fetched {archive.name} lean-deltas", tmp_path)[0] == 0
    assert side["format"] == 3


def test_switching_deltas_off_keeps_the_stored_full_archive(box, tmp_path):
    """Found by a newcomer: with a stored chain (a full archive and a delta) and
    ``fetched_keep: 1``, the first run after ``enabled: false`` kept the delta in
    ``fetched/``, deleted it at once as superseded, and deleted the full archive without
    a word: the client held no archive the server had stored. A delta does not count
    against ``fetched_keep`` now, and every deletion is logged."""
    import time

    data = tmp_path / "d"
    box.write_config(incremental={}, fetched_keep=1)
    assert box.cli("run").returncode == 0
    full = box.published()[-1]
    assert run_serve(box, f"fetched {full.name} lean-deltas", tmp_path)[0] == 0
    (data / "f").write_bytes(b"changed")
    time.sleep(1.05)
    made = box.cli("run")
    assert made.returncode == 0 and "lean delta" in made.stderr, made.stderr
    delta = box.published()[-1]
    assert run_serve(box, f"fetched {delta.name} lean-deltas", tmp_path)[0] == 0
    time.sleep(1.05)
    box.write_config(incremental={"enabled": False}, fetched_keep=1)
    switched = box.cli("run")
    assert switched.returncode == 0, switched.stderr
    newest = box.published()[-1]
    assert [a.name for a in box.published()] == [newest.name]
    fetched = sorted(p.name for p in (box.archives / "fetched").iterdir())
    assert fetched == [full.name, full.name + ".json"]
    assert f"retention: deleting {delta.name}" in switched.stderr


def test_fetched_keep_never_counts_an_archive_of_unknown_kind_as_full(box, tmp_path):
    """Found by an outside review: a fetched delta whose sidecar could not be read
    counted as a full archive, so ``fetched_keep: 1`` kept it and deleted the chain's
    real full archive. Only a sidecar that says "full" counts now; the unreadable one
    stays while it is newer than the kept full archive, and goes with ``fetched_keep: 0``."""
    import shutil
    import time

    from pullback.common.archive.directory import FETCHED_DIR, keep_fetched

    box.write_config(incremental={}, fetched_keep=1)
    assert box.cli("run").returncode == 0
    full = box.published()[-1]
    assert run_serve(box, f"fetched {full.name} lean-deltas", tmp_path)[0] == 0
    (tmp_path / "d" / "f").write_bytes(b"changed")
    time.sleep(1.05)
    made = box.cli("run")
    assert made.returncode == 0 and "lean delta" in made.stderr, made.stderr
    delta = box.published()[-1]
    fetched = box.archives / FETCHED_DIR
    fetched.mkdir(exist_ok=True)
    for archive in (delta,) if (fetched / full.name).exists() else (full, delta):
        for path in (archive, archive.with_name(archive.name + ".json")):
            shutil.move(path, fetched / path.name)
    (fetched / (delta.name + ".json")).write_text("{not json")
    assert keep_fetched(box.archives, 1) == []
    assert sorted(p.name for p in fetched.iterdir() if not p.name.endswith(".json")) == [
        full.name,
        delta.name,
    ]
    # fetched_keep 0 takes the delta; the full archive stays as the newest archive in
    # which every service succeeded (local retention's promise: test_fetched_retention.py)
    assert keep_fetched(box.archives, 0) == [delta.name]


def test_an_archive_no_pull_will_take_is_listed_as_superseded(box, tmp_path):
    """Found by a newcomer: an archive the server never stored, older than one it did
    and that no archive is built on (here a missed day's full archive), stayed "ready"
    in ``pullback-client list`` until retention removed it, though no pull takes it. It
    is "superseded" now, in the table and in ``--json``'s ``where``; the newest archive
    not stored yet stays "ready". (A missed delta a newer one is built on is not: see
    the next test.)"""
    import time

    box.write_config(incremental={}, keep_last=5)
    names = []

    def day(number: int) -> None:
        (tmp_path / "d" / "f").write_bytes(b"day %d" % number)
        time.sleep(1.05)
        assert box.cli("run").returncode == 0
        names.append(box.published()[-1].name)

    def where() -> tuple[dict[str, str], dict[str, str]]:
        listed = json.loads(box.cli("list", "--json").stdout)
        table = box.cli("list").stdout.splitlines()[1:]
        return {r["name"]: r["where"] for r in listed}, {
            line.split()[0]: line.split("  ")[-1] for line in table
        }

    day(0)
    day(1)  # the server missed day 0, and stores day 1
    assert run_serve(box, f"fetched {names[1]}", tmp_path)[0] == 0
    listed, table = where()
    assert listed[names[0]] == table[names[0]] == "superseded", table
    assert listed[names[1]] == table[names[1]] == "stored, kept", table
    day(2)
    listed, table = where()
    assert listed[names[2]] == table[names[2]] == "ready", table
    assert listed[names[0]] == "superseded"  # until keep_last's retention removes it


def test_a_missed_days_delta_another_is_built_on_is_not_superseded(box, tmp_path):
    """Found by an outside review: with deltas, a missed day's delta that a newer,
    stored delta is built on was listed "superseded", though chain retention keeps it
    and a pull from the full archive takes it."""
    import time

    box.write_config(incremental={}, keep_last=1, keep_days=0)
    names = []
    for number in range(3):
        (tmp_path / "d" / "g").write_bytes(b"day %d" % number)
        time.sleep(1.05)
        made = box.cli("run")
        assert made.returncode == 0, made.stderr
        assert number == 0 or "lean delta" in made.stderr, made.stderr
        names.append(box.published()[-1].name)
        if number in (0, 2):  # the server missed day 1: it applied it in day 2's chain
            assert run_serve(box, f"fetched {names[-1]} lean-deltas", tmp_path)[0] == 0
    listed = {r["name"]: r for r in json.loads(box.cli("list", "--json").stdout)}
    assert listed[names[2]]["sidecar"]["archive"]["base"]["name"] == names[1]
    assert listed[names[1]]["where"] == "base, kept"  # not "ready": it is not stored alone


def test_list_says_each_kind_a_broken_chain_and_another_host_names_archive(box, tmp_path):
    """Found by a newcomer: ``list`` had no column for full or delta, listed a delta
    whose full archive was deleted by hand like any other, and called an archive made
    under the old ``hostname:`` "ready", though serve does not offer it."""
    full, first, second = _stored_chain(box, tmp_path, 2)

    def rows() -> tuple[dict[str, list[str]], dict[str, dict]]:
        lines = box.cli("list").stdout.splitlines()
        assert lines[0].split()[:3] == ["ARCHIVE", "KIND", "SIZE"], lines[0]
        listed = json.loads(box.cli("list", "--json").stdout)
        return {line.split()[0]: line.split("  ") for line in lines[1:]}, {
            r["name"]: r for r in listed
        }

    table, listed = rows()
    assert table[full.name][1] == "full" and table[second.name][1] == "delta", table
    assert [listed[a.name]["kind"] for a in (full, first, second)] == ["full", "delta", "delta"]
    assert not any(r["chain_broken"] for r in listed.values())
    for path in (full, full.with_name(full.name + ".json")):
        path.unlink()  # by hand
    table, listed = rows()
    assert table[second.name][-1].endswith("; chain broken"), table
    assert listed[second.name]["chain_broken"] and listed[first.name]["chain_broken"]
    box.write_config(incremental={}, hostname="renamed")
    table, listed = rows()
    made = f"not offered (made as {box.hostname}); chain broken"
    assert table[second.name][-1] == made, table
    assert listed[second.name]["where"] == "not offered"
    assert listed[second.name]["made_as"] == box.hostname


def _stored_chain(box, tmp_path, deltas: int) -> list:
    """A full archive and ``deltas`` deltas on it, the full one marked stored (so deltas
    are made): the archives, oldest first, still in the archive directory."""
    import time

    box.write_config(incremental={}, fetched_keep=1, keep_last=10, keep_days=30)
    assert box.cli("run").returncode == 0
    assert run_serve(box, f"fetched {box.published()[-1].name} lean-deltas", tmp_path)[0] == 0
    for day in range(deltas):
        (tmp_path / "d" / "g").write_bytes(b"day %d" % day)
        time.sleep(1.05)
        made = box.cli("run")
        assert made.returncode == 0 and "lean delta" in made.stderr, made.stderr
    return box.published()


def _move_to_fetched(box, *archives) -> None:
    import shutil

    from pullback.common.archive.directory import FETCHED_DIR

    (box.archives / FETCHED_DIR).mkdir(exist_ok=True)
    for archive in archives:
        for path in (archive, archive.with_name(archive.name + ".json")):
            shutil.move(path, box.archives / FETCHED_DIR / path.name)


def test_fetched_deltas_stay_while_their_full_archive_is_anywhere(box, tmp_path):
    """Found by an outside review: ``keep_fetched`` called a fetched delta "without its
    full archive" from ``fetched/`` alone, so it deleted (a) the deltas of a full archive
    whose sidecar could not be read, and (b) a stored delta moved alone to ``fetched/``
    while its full archive was still in the archive directory. It follows the chain
    through both directories now; a delta whose base is gone still goes."""
    from pullback.common.archive.directory import FETCHED_DIR, keep_fetched

    full, first, second = _stored_chain(box, tmp_path, deltas=2)
    fetched = box.archives / FETCHED_DIR
    _move_to_fetched(box, first, second)  # (b): the full archive stays where it was
    assert keep_fetched(box.archives, 1) == []
    _move_to_fetched(box, full)
    (fetched / (full.name + ".json")).write_text("{not json")  # (a)
    assert keep_fetched(box.archives, 1) == []
    assert sorted(p.name for p in fetched.glob("*.zst")) == [full.name, first.name, second.name]
    (fetched / full.name).unlink()
    (fetched / (full.name + ".json")).unlink()
    assert keep_fetched(box.archives, 1) == [first.name, second.name]


def test_a_move_to_fetched_cut_short_is_finished(box, tmp_path):
    """Found by an outside review: a crash between ``retire_marked``'s two renames (the
    archive in ``fetched/``, its sidecar not yet) made the next run delete the archive as
    an unfinished publish and its sidecar as an orphan. The move is finished now."""
    from pullback.common.archive.directory import FETCHED_DIR, apply_retention

    (full,) = _stored_chain(box, tmp_path, deltas=0)
    box.write_config(fetched_keep=1, keep_last=10, keep_days=30)
    (box.archives / FETCHED_DIR).mkdir()
    full.rename(box.archives / FETCHED_DIR / full.name)  # the cut: its sidecar stays
    assert apply_retention(box.archives, keep_last=10, keep_days=30, fetched_keep=1) == []
    moved = box.archives / FETCHED_DIR / full.name
    assert moved.is_file() and moved.with_name(full.name + ".json").is_file()
    assert not (box.archives / (full.name + ".json")).exists()
    # an archive in fetched/ whose sidecar is nowhere (a deletion cut short) still goes
    moved.with_name(full.name + ".json").unlink()
    assert apply_retention(box.archives, keep_last=10, keep_days=30, fetched_keep=1) == [full.name]


def test_the_log_says_an_archive_moved_before_it_says_it_deleted_it(box, tmp_path):
    """Found by an outside review: "retention: deleting fetched/X (past fetched_keep)"
    came before "X was stored by the server; moved to fetched/"."""
    import time

    box.write_config(fetched_keep=0)
    names = []
    logs = []
    for _ in range(2):
        made = box.cli("run")
        assert made.returncode == 0, made.stderr
        logs.append(made.stderr)
        names.append(box.published()[-1].name)
        assert run_serve(box, f"fetched {names[-1]}", tmp_path)[0] == 0
        time.sleep(1.05)
    lines = logs[1].splitlines()
    moved = [i for i, line in enumerate(lines) if f"{names[0]} was stored" in line]
    deleted = [i for i, line in enumerate(lines) if f"deleting fetched/{names[0]}" in line]
    assert moved and deleted and moved[0] < deleted[0], logs
