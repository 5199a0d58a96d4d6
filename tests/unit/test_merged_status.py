"""``status --merge``: one view of a fleet sharded across pull servers, from status files
written by the real writer (status_file.record) for two servers, each with its own
server.yaml and state directory; the merged files read as another machine's words."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket

import pytest

from pullback.common.clock import iso, utc_now
from pullback.common.outcome import Status
from pullback.server import status_file
from pullback.server.fleet_view import fleet
from pullback.server.merged_status import (
    MAX_MERGED_BYTES,
    MAX_MERGED_HOSTS,
    MAX_TEXT,
    Source,
    default_max_age,
    read_merged,
)
from pullback.server.results import HostResult
from tests.helpers.status_servers import HOURS, Server, make_server, status, stored

pytestmark = pytest.mark.unit


@pytest.fixture
def two(tmp_path) -> tuple[Server, Server]:
    """Server a (a1, a2) and server b (b1 with max_age 2h, b2): all stored an hour ago
    but b1, stored three hours ago, so stale by its own max_age."""
    a = make_server(tmp_path, "a", {"a1": None, "a2": None})
    b = make_server(tmp_path, "b", {"b1": "2h", "b2": None})
    a.pulled(stored("a1", 1), stored("a2", 1))
    b.pulled(stored("b1", 3), stored("b2", 1))
    return a, b


def table_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """The table's rows by (HOST, SERVER), cut where the header's titles begin (a server
    named by its file's path may hold spaces)."""
    header, *lines = out.splitlines()
    titles = ["HOST", "SERVER", "STATE", "LAST RESULT", "NEWEST SNAPSHOT"]
    starts = [header.index(title) for title in titles]
    assert starts == sorted(starts)
    rows = {}
    for line in lines:
        cells = [
            line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)
        ]
        if cells[2] in ("ok", "stale", "failed", "attention"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_the_writer_records_its_server_and_each_configured_host_s_max_age(tmp_path):
    a = make_server(tmp_path, "a", {"a1": "2h", "a2": None})
    a.pulled(stored("a1", 1))
    data = json.loads(a.status.read_text())
    assert data["server"] == socket.gethostname() == status_file.server_name()
    assert data["configured"] == {"a1": {"max_age": 2 * HOURS}, "a2": {"max_age": 36 * HOURS}}
    assert data["updated"]
    # a run that does not know the configuration keeps what the last pull recorded
    status_file.record_outputs(a.config.state_dir, ["metrics file /x: Read-only file system"])
    assert json.loads(a.status.read_text())["configured"] == data["configured"]
    assert default_max_age() == 36 * HOURS  # the schema's default


def test_two_servers_in_one_table_each_row_with_its_server(two, capsys):
    a, b = two
    merged = b.renamed("backup-b")
    code, out, err = status(a, "--merge", str(merged), capsys=capsys)
    rows = table_rows(out)
    here = socket.gethostname()
    assert set(rows) == {("a1", here), ("a2", here), ("b1", "backup-b"), ("b2", "backup-b")}
    assert rows[("b1", "backup-b")][0] == "stale"  # 3h old, past b1's own max_age of 2h
    assert rows[("b2", "backup-b")][:2] == ["ok", "stored (full)"]  # from the merged file's "delta"
    assert out.splitlines()[1].startswith("b1")  # worst first, across servers
    assert "backup-b: status file written " in out
    assert code == 1
    assert err == "stale (no snapshot within max_age): b1 (backup-b)\n"


def test_without_merge_the_table_has_no_server_column(two, capsys):
    a, _ = two
    code, out, err = status(a, capsys=capsys)
    assert out.splitlines()[0].split()[:2] == ["HOST", "STATE"]
    assert (code, err) == (0, "")


def test_check_counts_every_server_s_hosts(two, capsys):
    a, b = two
    merged = b.renamed("backup-b")
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 2
    assert out.startswith(
        "PULLBACK CRITICAL - stale: b1 (backup-b); 3 of 4 hosts ok | "
        "hosts=4 ok=3 attention=0 failed=0 stale=1 oldest_snapshot_age="
    )
    assert out.count("\n") == 1


def test_json_has_every_server_and_every_row(two, capsys):
    a, b = two
    merged = b.renamed("backup-b")
    code, out, _ = status(a, "--json", "--merge", str(merged), capsys=capsys)
    data = json.loads(out)
    servers = {s["server"]: s for s in data["servers"]}
    assert set(servers) == {socket.gethostname(), "backup-b"}
    assert servers["backup-b"]["file"] == str(merged) and servers["backup-b"]["error"] is None
    assert set(servers["backup-b"]["status"]["hosts"]) == {"b1", "b2"}
    assert servers[socket.gethostname()]["file"] is None
    assert {(r["host"], r["server"], r["state"]) for r in data["rows"]} == {
        ("a1", socket.gethostname(), "ok"),
        ("a2", socket.gethostname(), "ok"),
        ("b1", "backup-b", "stale"),
        ("b2", "backup-b", "ok"),
    }
    assert data["duplicates"] == {}
    assert code == 1


def test_a_host_on_two_servers_is_shown_twice_and_named_with_both(tmp_path, capsys):
    a = make_server(tmp_path, "a", {"a1": None, "web": None})
    b = make_server(tmp_path, "b", {"b1": None, "web": None})
    a.pulled(stored("a1", 1), stored("web", 1))
    b.pulled(stored("b1", 1), stored("web", 2))
    merged = b.renamed("backup-b")
    here = socket.gethostname()
    code, out, err = status(a, "--merge", str(merged), capsys=capsys)
    rows = table_rows(out)
    assert ("web", here) in rows and ("web", "backup-b") in rows
    assert code == 1
    assert f"on more than one server (each host belongs in one server.yaml): web: {here}, " in err
    assert err.rstrip().endswith("web: " + f"{here}, backup-b")
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 1
    assert out.startswith(
        f"PULLBACK WARNING - on more than one server: web ({here}, backup-b); 4 of 4 hosts ok |"
    )


def test_a_file_merged_twice_or_the_server_s_own_is_told_apart_by_its_path(two, capsys):
    a, _ = two
    code, out, err = status(a, "--merge", str(a.status), capsys=capsys)
    here = socket.gethostname()
    assert set(table_rows(out)) == {
        ("a1", here),
        ("a2", here),
        ("a1", f"{here} ({a.status})"),
        ("a2", f"{here} ({a.status})"),
    }
    assert code == 1
    assert f"a1: {here}, {here} ({a.status})" in err


def test_a_merged_file_that_cannot_be_read_is_named_and_the_rest_is_shown(two, capsys):
    a, b = two
    missing = b.status.parent / "gone.json"
    code, out, err = status(a, "--merge", str(b.status), "--merge", str(missing), capsys=capsys)
    assert code == 1
    assert {host for host, _ in table_rows(out)} == {"a1", "a2", "b1", "b2"}
    assert f"{missing}: cannot be read (No such file or directory); hosts unknown" in out
    assert (
        f"cannot read the merged status file {missing}: No such file or directory "
        "(its hosts are unknown)"
    ) in err
    # --check: UNKNOWN (those hosts may be stale) ...
    fresh = make_server(b.path.parent, "c", {"c1": None})
    fresh.pulled(stored("c1", 1))
    code, out, _ = status(fresh, "--check", "--merge", str(missing), capsys=capsys)
    assert code == 3
    assert out.startswith(
        f"PULLBACK UNKNOWN - cannot read: {missing} (No such file or directory); 1 of 1 hosts ok |"
    )
    # ... but a stale host is CRITICAL whatever else is unknown
    code, out, _ = status(a, "--check", "--merge", str(b.status), "--merge", str(missing),
                          capsys=capsys)  # fmt: skip
    assert code == 2 and out.startswith("PULLBACK CRITICAL - stale: b1")
    assert f"cannot read: {missing} (No such file or directory)" in out


BAD_FILES = {
    "empty.json": b"",
    "truncated.json": b'{"hosts": {"b1": {"last_result": "sto',
    "list.json": b"[1, 2]",
    "latin1.json": b'{"hosts": {"caf\xe9": {}}}',
    "hosts-a-list.json": b'{"hosts": ["b1"]}',
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "nan.json": b'{"hosts": {"b1": {"duration": NaN}}}',
    "empty-object.json": b"{}",  # an outside walk: read as a server of no hosts, OK
    "other-object.json": b'{"name": "web1", "version": 3}',
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_file_that_is_not_a_status_file_is_refused_with_its_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    source = read_merged(path)
    assert source.error and source.status == {} and source.server == str(path)
    assert source.error.startswith(("not JSON", "not a status file"))


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("wb") as file:
        file.truncate(MAX_MERGED_BYTES + 1)  # sparse: costs no disk
    assert read_merged(path).error == f"larger than {MAX_MERGED_BYTES >> 20} MiB"


def test_a_fifo_or_a_directory_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "status.json"
    os.mkfifo(fifo)
    assert read_merged(fifo).error == "not a regular file"
    assert read_merged(tmp_path).error == "not a regular file"


def test_names_a_server_yaml_cannot_hold_are_refused(tmp_path):
    long = tmp_path / "long.json"
    long.write_text(json.dumps({"hosts": {"x" * 10_000_000: {}}}))  # a 10 MB host name
    error = read_merged(long).error
    assert error is not None and error.startswith("not a host name in hosts: 'xxxx")
    assert len(error) <= 120
    escape = tmp_path / "escape.json"
    escape.write_text(json.dumps({"hosts": {"b1\x1b[2J": {}}}))
    assert read_merged(escape).error == "not a host name in hosts: 'b1\\x1b[2J'"


def test_thousands_of_hosts_are_read_more_than_the_limit_refused(tmp_path):
    many = tmp_path / "many.json"
    when = iso(utc_now())
    hosts = {f"h{i}": {"last_result": "stored", "newest_snapshot": when} for i in range(5000)}
    many.write_text(json.dumps({"hosts": hosts}))
    assert len(read_merged(many).status["hosts"]) == 5000
    hosts.update({f"x{i}": {} for i in range(MAX_MERGED_HOSTS)})
    many.write_text(json.dumps({"hosts": hosts}))
    assert read_merged(many).error == f"more than {MAX_MERGED_HOSTS} hosts in hosts"


def test_a_file_of_tiny_values_is_refused_before_parsing_and_a_real_large_one_read(tmp_path):
    """An outside attack: 32 MiB of ``[[[[]]]],`` cost 1.4 GB to parse (42 times its
    size). Values are counted before parsing; a real file of 5,000 hosts with full
    histories (some 130 values each) is still read."""
    tiny = tmp_path / "tiny.json"
    tiny.write_text('{"hosts": {"a": {"warnings": [' + ",".join(["[[]]"] * 600_000) + "]}}}")
    assert tiny.stat().st_size < MAX_MERGED_BYTES
    assert read_merged(tiny).error == "not a status file: more than 1,500,000 values"
    when = iso(utc_now())
    entry = {
        "last_result": "stored",
        "newest_snapshot": when,
        "reason": "stored web-20261204T031500Z.tar.zst as restic snapshot 1a2b3c4d (+12 MiB)",
        "history": [{"time": when, "result": "stored", "repository_bytes": 123456789}]
        * status_file.HISTORY,
        "database_dumps": ["services/db/postgresql/app.sql.zst"] * 5,
    }
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"hosts": {f"web{i}": entry for i in range(5000)}}))
    assert real.stat().st_size < MAX_MERGED_BYTES
    assert len(read_merged(real).status["hosts"]) == 5000


def test_hostile_words_are_escaped_and_cut_and_wrong_types_left_out(two, capsys):
    a, b = two
    b.pulled(HostResult("b2", reason="cannot connect\x1b[2J\x1b]0;owned\x07" + "y" * 50_000))
    data = json.loads(b.status.read_text())
    data["server"] = "b\x1b[31m"  # not a host name: the file is named by its path
    entry = data["hosts"]["b2"]
    entry.update(
        {
            "repository_bytes": 10**400,
            "duration": "forever",
            "newest_snapshot": "yesterday",
            "history": [{"result": "\x1b[2J"}, "x", {"result": "stored"}],
        }
    )
    b.status.write_text(json.dumps(data))
    code, out, err = status(a, "--merge", str(b.status), capsys=capsys)
    assert code == 1
    assert "\x1b" not in out + err and "\x07" not in out + err
    (note,) = [line for line in out.splitlines() if line.startswith("b2 (")]
    assert note.startswith(f"b2 ({b.status}): cannot connect\\x1b[2J\\x1b]0;owned\\x07yyy")
    assert len(note) <= len(f"b2 ({b.status}): ") + MAX_TEXT
    row = next(line for line in out.splitlines()[1:] if line.startswith("b2 "))
    assert "failed" in row and "never" in row and row.rstrip().endswith("?✓")
    view = fleet(a.config, Source("a", None, {}), [read_merged(b.status)])
    (b2,) = [r for r in view.rows if r.host == "b2"]
    assert (b2.repository_bytes, b2.duration, b2.newest_age) == (None, None, None)


def test_a_file_no_longer_written_makes_its_hosts_stale(two):
    """The other server stopped (or the copying did): its hosts' newest snapshots only
    grow older, so each is stale once past its max_age, and the file's age is told."""
    a, b = two
    local = Source("a", None, json.loads(a.status.read_text()))
    merged = [read_merged(b.renamed("backup-b"))]
    now = fleet(a.config, local, merged)
    assert [r.host for r in now.rows if r.stale] == ["b1"]
    later = fleet(a.config, local, merged, utc_now() + dt.timedelta(days=3))
    assert {r.host for r in later.rows if r.stale} == {"a1", "a2", "b1", "b2"}
    assert later.notes() == [f"backup-b: status file written 3d00h ago ({b.status})"]


def test_a_file_of_an_older_version_is_judged_by_the_default_max_age(tmp_path, capsys):
    """Before files recorded ``configured`` and ``server``: every host the file holds, by
    the schema's default max_age (36h), named by the file's path."""
    a = make_server(tmp_path, "a", {"a1": None})
    a.pulled(stored("a1", 1))
    old = tmp_path / "old-b.json"
    hosts = {
        "b1": {"last_result": "stored", "newest_snapshot": stored("b1", 30).newest_snapshot},
        "b2": {"last_result": "stored", "newest_snapshot": stored("b2", 40).newest_snapshot},
    }
    old.write_text(json.dumps({"hosts": hosts, "updated": iso(utc_now())}))
    code, out, err = status(a, "--merge", str(old), capsys=capsys)
    rows = table_rows(out)
    assert rows[("b1", str(old))][0] == "ok" and rows[("b2", str(old))][0] == "stale"
    assert (code, err) == (1, f"stale (no snapshot within max_age): b2 ({old})\n")


def test_a_host_removed_from_the_other_server_s_config_is_not_shown(tmp_path, capsys):
    a = make_server(tmp_path, "a", {"a1": None})
    a.pulled(stored("a1", 1))
    b = make_server(tmp_path, "b", {"b1": None, "gone": None})
    b.pulled(stored("b1", 1), stored("gone", 1))
    b = make_server(tmp_path, "b", {"b1": None})  # gone: removed from server.yaml
    b.pulled(stored("b1", 1))
    assert "gone" in json.loads(b.status.read_text())["hosts"]  # kept, as ever
    code, out, _ = status(a, "--merge", str(b.renamed("backup-b")), capsys=capsys)
    assert {host for host, _ in table_rows(out)} == {"a1", "b1"} and code == 0


def test_the_page_of_the_fleet_names_servers_and_escapes_their_words(two, capsys, tmp_path):
    a, b = two
    b.pulled(HostResult("b2", reason="<script>alert(1)</script>"))
    merged = b.renamed("backup-b")
    page = tmp_path / "www" / "fleet.html"
    code, out, err = status(a, "--html", str(page), "--merge", str(merged), capsys=capsys)
    assert out == "" and code == 1 and "failed (the last pull): b2 (backup-b)" in err
    html = page.read_text()
    assert "<th>server</th>" in html
    assert 'data-host="b2" data-server="backup-b"' in html
    assert "<td>backup-b</td>" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    assert "backup-b: status file written" in html
    assert oct(page.stat().st_mode & 0o777) == "0o644"
    # this server's own page (what every run writes) has no server column
    code, _, _ = status(a, "--html", str(page), capsys=capsys)
    assert code == 0 and "<th>server</th>" not in page.read_text()


def test_a_page_that_cannot_be_written_is_an_error_naming_it(two, capsys, tmp_path):
    a, _ = two
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = status(a, "--html", str(blocker / "index.html"), capsys=capsys)
    assert code == 1 and f"cannot write {blocker / 'index.html'}: " in err


def test_the_page_shows_a_hosts_last_warnings_bounded_and_escaped(two, capsys, tmp_path):
    """Found by a newcomer: "fell back to a full transfer: <why>" reached the mail and
    status.json but not the page, which server.md promised. The page shows the first
    PAGE_WARNINGS of the last pull's warnings (a client's words: one line each, at most
    300 characters, escaped) and how many more there are."""
    a, b = two
    words = [
        "fell back to a full transfer: staging/b2 is not the delta's base",
        "<script>alert(1)</script>\nforged line",
        "x" * 5000,
        *[f"warning {n}" for n in range(4)],
    ]
    b.pulled(HostResult("b2", Status.STORED, warnings=words))
    a.pulled(HostResult("a1", Status.STORED, warnings=["a1: read failed: EIO; padded"]))
    page = tmp_path / "www" / "fleet.html"
    status(a, "--html", str(page), "--merge", str(b.renamed("backup-b")), capsys=capsys)
    html = page.read_text()
    assert "a1: read failed: EIO; padded" in html  # this server's own host too
    assert "fell back to a full transfer: staging/b2 is not the delta&#39;s base" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\nforged line" in html
    assert "<script" not in html and "x" * 300 not in html and "x" * 299 in html
    assert "warning 1" in html and "warning 2" not in html
    assert "… and 2 more (status --json)" in html


def test_a_merged_file_can_neither_forge_perfdata_nor_crowd_out_this_servers_hosts(
    tmp_path, capsys
):
    """An outside attack: a merged file's words with a '|' became the --check line's
    perfdata (monitors split there: a forged stale=0, the real text cut), and thousands
    of its stale hosts, sorted before this server's by name, hid this server's stale
    host from the names the line shows."""
    a = make_server(tmp_path, "a", {"zz-own": None})
    a.pulled(stored("zz-own", 100))  # stale: 100 h old
    forged = "x | hosts=2 ok=2 attention=0 failed=0 stale=0 oldest_snapshot_age=0s"
    many = {
        "server": "backup2",
        "updated": iso(utc_now()),
        "configured": {f"h{n:05}": {"max_age": 3600} for n in range(50)},
        "hosts": {f"h{n:05}": {"newest_snapshot": "2020-01-01T00:00:00Z"} for n in range(50)},
        "outputs": {"problems": [forged]},
    }
    merged = tmp_path / "backup2.json"
    merged.write_text(json.dumps(many))
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 2
    assert out.count("|") == 1, out
    own = socket.gethostname()
    assert out.startswith(f"PULLBACK CRITICAL - stale: zz-own ({own}), h00000 (backup2)"), out
    assert "not written: backup2: x ¦ hosts=2" in out
    assert out.split(" | ")[1].startswith("hosts=51 ok=0 attention=0 failed=0 stale=51"), out
    code, _, err = status(a, "--merge", str(merged), capsys=capsys)
    assert f"stale (no snapshot within max_age): zz-own ({own}), h00000" in err, err


def test_a_time_ahead_is_shown_ahead_and_a_snapshot_dated_ahead_is_stale_everywhere(
    tmp_path, capsys
):
    """An outside attack: a newest snapshot dated in 9999 read "0s ago" in a stale row,
    a drill dated ahead "0s ago" for ever, and the pull's own report called such a host
    fresh (only status and the metrics had the one-hour AHEAD rule)."""
    from pullback.server.pull import assess

    a = make_server(tmp_path, "a", {"web1": None, "web2": None})
    ahead = stored("web1", -49.5)  # dated 49.5 hours ahead
    a.pulled(ahead, stored("web2", 1))
    data = json.loads(a.status.read_text())
    data["hosts"]["web2"]["last_verified"] = "9999-01-01T00:00:00Z"
    a.status.write_text(json.dumps(data))
    code, out, err = status(a, capsys=capsys)
    (web1,) = [line for line in out.splitlines() if line.startswith("web1 ")]
    assert " stale " in web1 and "2d01h ahead" in web1, web1
    (web2,) = [line for line in out.splitlines() if line.startswith("web2 ")]
    assert " ahead" in web2 and "0s ago" not in web2, web2
    assert code == 1 and "stale (no snapshot within max_age): web1" in err
    fresh = stored("web1", -49.5)
    assess(a.config, [fresh])
    assert fresh.stale and fresh.warnings[0].startswith("the newest snapshot is dated 2d0"), (
        fresh.warnings
    )
    assert "ahead (max_age 36h00m; a date over 1h00m ahead counts as stale)" in fresh.warnings[0]


def test_a_partial_snapshot_is_named_in_status_its_exit_code_and_the_metrics(tmp_path, capsys):
    """An outside walk: a service that failed on the client made the host 'needs
    attention' in --check, but status exited 0, its table and page named no service and
    no metric changed; only the mail and --json said which."""
    from pullback.server import metrics

    a = make_server(tmp_path, "a", {"web1": None, "web2": None})
    partial = stored("web1", 1)
    partial.client_failed_services = ["bad\x1b[2J", "db"]
    a.pulled(partial, stored("web2", 1))
    code, out, err = status(a, capsys=capsys)
    assert code == 1, err
    assert (
        "failed on the client (the newest snapshot is partial): web1 (pullback-client list "
        "on the host says why)"
    ) in err
    assert "web1: failed on the client: bad\\x1b[2J, db (the snapshot is partial)" in out
    assert "\x1b" not in out + err
    text = metrics.build(a.config, json.loads(a.status.read_text())).render()
    assert 'pullback_newest_snapshot_failed_services{host="web1"} 2' in text
    assert 'pullback_newest_snapshot_failed_services{host="web2"} 0' in text
    code, out, _ = status(a, "--check", capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - needs attention: web1"), out
    a.pulled(stored("web1", 0.5))  # the next archive is whole
    code, _, err = status(a, capsys=capsys)
    assert code == 0, err


def test_an_outputs_problem_is_cleared_only_by_a_run_of_the_same_kind(tmp_path, capsys):
    """An outside walk: a pull's undelivered healthchecks ping was cleared by the next
    maintenance, which sends no pull ping."""
    a = make_server(tmp_path, "a", {"web1": None})
    a.pulled(stored("web1", 1))
    state = a.config.state_dir
    status_file.record_outputs(state, ["healthchecks ping not delivered"], "pull")
    status_file.record_outputs(state, [], "maintain")
    assert status_file.output_problems(status_file.load_status(state)) == [
        "healthchecks ping not delivered"
    ]
    status_file.record_outputs(state, ["maintenance report not mailed"], "maintain")
    code, _, err = status(a, capsys=capsys)
    assert code == 1 and "not written by the last run: maintenance report not mailed" in err
    status_file.record_outputs(state, [], "pull")
    status_file.record_outputs(state, [], "maintain")
    assert "outputs" not in status_file.load_status(state)


def test_another_server_s_disabled_host_is_disabled_here_too(tmp_path, capsys):
    """helper-138 R1: a host disabled on server b (``enabled: false``) was judged by the
    monitoring machine that merges b's file from ``configured``, which said nothing of
    it: stale at its max_age, ``--check`` CRITICAL for ever. b records it now, and the
    merged view shows it disabled, never stale; b's enabled host still turns stale."""
    a = make_server(tmp_path, "a", {"a1": None})
    b = make_server(tmp_path, "b", {"b1": "2h", "b2": "2h"}, disabled=("b1",))
    a.pulled(stored("a1", 1))
    b.pulled(stored("b1", 3), stored("b2", 3))
    data = json.loads(b.status.read_text())
    assert data["configured"] == {
        "b1": {"max_age": 2 * HOURS, "enabled": False},
        "b2": {"max_age": 2 * HOURS},
    }
    merged = b.renamed("backup-b")
    code, out, err = status(a, "--merge", str(merged), capsys=capsys)
    rows = table_rows(out)
    assert rows[("b2", "backup-b")][0] == "stale"
    assert "b1" in out and any(
        line.startswith("b1") and " disabled " in line for line in out.splitlines()
    ), out
    assert (code, err) == (1, "stale (no snapshot within max_age): b2 (backup-b)\n")
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 2
    assert out.startswith(
        "PULLBACK CRITICAL - stale: b2 (backup-b); 1 of 2 hosts ok (1 disabled: b1 (backup-b))"
    ), out
    # b2 pulled again: nothing else is wrong, the disabled host makes no verdict
    b.pulled(stored("b2", 1))
    merged = b.renamed("backup-b")
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 0, out
    assert out.startswith("PULLBACK OK - 2 of 2 hosts ok (1 disabled: b1 (backup-b)) | "), out
    # a failed pull b's administrator ran by name (R7) counts here as on b
    b.pulled(HostResult("b1", Status.FAILED, "cannot connect", started=iso(utc_now())))
    merged = b.renamed("backup-b")
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 1 and out.startswith("PULLBACK WARNING - last pull failed: b1 (backup-b);")
    b.pulled(stored("b1", 3))  # (a later named pull stored)
    merged = b.renamed("backup-b")
    # the flag is another machine's word, shape-checked: anything but false is not it
    data = json.loads(merged.read_text())
    data["configured"]["b1"]["enabled"] = "false"
    merged.write_text(json.dumps(data))
    code, out, _ = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 2 and out.startswith("PULLBACK CRITICAL - stale: b1 (backup-b);"), out


@pytest.mark.parametrize("where", ["max_age", "duration"])
def test_a_huge_integer_in_a_merged_file_is_no_internal_error(tmp_path, capsys, where):
    """helper-141 F3: ``configured.*.max_age`` or a host's ``duration`` of 10**400 (JSON
    reads any whole number) was a float() OverflowError: ``status --check --merge``
    ended with exit 70 and no PULLBACK line, this server's verdict lost too. The value
    is left out, as one of any other wrong shape there (a ``repository_bytes`` of
    10**400 too): b1's max_age is then the default, and b1 (disabled) still disabled."""
    a = make_server(tmp_path, "a", {"a1": None})
    a.pulled(stored("a1", 1))
    b = make_server(tmp_path, "b", {"b1": "2h"}, disabled=("b1",))
    b.pulled(stored("b1", 1))
    data = json.loads(b.status.read_text())
    data["server"] = "other"
    if where == "max_age":
        data["configured"]["b1"]["max_age"] = 10**400
    else:
        data["hosts"]["b1"]["duration"] = 10**400
    merged = tmp_path / "other.json"
    merged.write_text(json.dumps(data))
    code, out, err = status(a, "--check", "--merge", str(merged), capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK - 1 of 1 hosts ok (1 disabled: b1 (other))"), (
        code,
        out,
        err,
    )
    assert "disabled=1" in out, out
    source = read_merged(merged)
    assert source.error is None
    assert source.status["configured"]["b1"] == (
        {"enabled": False} if where == "max_age" else {"max_age": 7200.0, "enabled": False}
    )
    assert ("duration" in source.status["hosts"]["b1"]) is (where == "max_age")


def test_a_huge_integer_in_this_server_s_status_json_is_dropped(tmp_path, capsys):
    """The same number in this server's own status.json: the fact is dropped, as one of
    any other wrong shape (it was the same OverflowError, in every command reading it)."""
    a = make_server(tmp_path, "a", {"a1": None})
    a.pulled(stored("a1", 1))
    data = json.loads(a.status.read_text())
    data["hosts"]["a1"]["duration"] = 10**400
    a.status.write_text(json.dumps(data))
    code, out, err = status(a, "--check", capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK"), (code, out, err)
    assert "duration" not in status_file.read_status(a.config.state_dir)["hosts"]["a1"]


def test_a_server_whose_every_host_is_disabled_records_it_though_it_never_pulls(tmp_path, capsys):
    """helper-144 F5: b's last host disabled (b kept for restores), the units'
    ExecCondition= (``pullback-server configured``) skipped every pull, so b's
    status.json kept ``configured`` without ``enabled: false`` and a monitoring machine
    merging it judged b1 enabled: stale, CRITICAL for ever. The condition records it
    now, once (nothing written while it does not change), and never makes a status
    file where no run made one."""
    from pullback.server.cli import main as server_main

    a = make_server(tmp_path, "a", {"a1": None})
    a.pulled(stored("a1", 1))
    b = make_server(tmp_path, "b", {"b1": "2h"})
    b.pulled(stored("b1", 3))
    b = make_server(tmp_path, "b", {"b1": "2h"}, disabled=("b1",))  # the admin's edit
    code, out, _ = status(a, "--check", "--merge", str(b.renamed("backup-b")), capsys=capsys)
    assert code == 2 and out.startswith("PULLBACK CRITICAL - stale: b1 (backup-b);"), out

    assert server_main(["--config", str(b.path), "configured"]) == 1, "the run is skipped"
    said = capsys.readouterr().out
    assert said == f"every host in {b.path} is disabled (enabled: false): nothing to pull\n"
    data = json.loads(b.status.read_text())
    assert data["configured"] == {"b1": {"max_age": 2 * HOURS, "enabled": False}}
    assert data["hosts"]["b1"]["last_result"] == "stored", "its record kept"
    code, out, _ = status(a, "--check", "--merge", str(b.renamed("backup-b")), capsys=capsys)
    assert code == 0 and out.startswith("PULLBACK OK - 1 of 1 hosts ok (1 disabled: b1 ("), out
    written = b.status.stat().st_mtime_ns, b.status.stat().st_ino
    assert server_main(["--config", str(b.path), "configured"]) == 1
    assert (b.status.stat().st_mtime_ns, b.status.stat().st_ino) == written, "unchanged"
    capsys.readouterr()
    # a server that never pulled: no state directory is made
    c = make_server(tmp_path, "c", {"c1": None}, disabled=("c1",))
    assert server_main(["--config", str(c.path), "configured"]) == 1
    assert not c.config.state_dir.exists()


def test_a_server_whose_every_host_is_disabled_keeps_its_metrics_written(tmp_path, capsys):
    """helper-147: the condition that records every host disabled (the hourly pull never
    runs again) left the metrics file as the last pull wrote it: the hosts enabled, and
    its timestamp going stale, so the documented PullbackMetricsNotWritten alert fired
    for ever. It writes the metrics file and the status page again, each time."""
    from pullback.server.cli import main as server_main
    from pullback.server.config import load_server_config

    server = make_server(tmp_path, "s", {"web1": None})
    metrics = tmp_path / "pullback.prom"
    text = server.path.read_text() + f"metrics_file: {metrics}\n"
    server.path.write_text(text)
    server.config = load_server_config(server.path)
    server.pulled(stored("web1", 1))
    assert server_main(["--config", str(server.path), "publish"]) == 0
    assert 'pullback_host_enabled{host="web1"} 1' in metrics.read_text()
    server.path.write_text(text.replace("  - name: web1\n", "  - name: web1\n    enabled: false\n"))
    metrics.write_text("# an old one\n")
    assert server_main(["--config", str(server.path), "configured"]) == 1
    capsys.readouterr()
    said = metrics.read_text()
    assert 'pullback_host_enabled{host="web1"} 0' in said, said[:1500]
    assert "pullback_metrics_timestamp_seconds" in said
