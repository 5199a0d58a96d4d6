"""Which snapshots a copy takes, and how the copy is compared with its primary."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pullback.common.errors import ConfigError
from pullback.server.backends import Role, Snapshot
from pullback.server.backends.location import locate
from pullback.server.config import load_server_config
from pullback.server.copy import compare, to_copy

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)


def snap(day: int, tree: str | None = None, sid: str | None = None) -> Snapshot:
    """The primary's snapshot of ``day``, or with ``sid`` its copy (which restic copy
    marks with the original's id)."""
    when = T0 + dt.timedelta(days=day)
    original = f"s{day}" if sid else None
    stamp = f"{when:%Y%m%dT%H%M%SZ}"
    return Snapshot(sid or f"s{day}", when, stamp, tree=tree or f"t{day}", original=original)


def test_a_copy_takes_what_it_lacks_newer_than_its_newest():
    primary = [snap(d) for d in range(5)]
    assert [s.id for s in to_copy(primary, [])] == ["s0", "s1", "s2", "s3", "s4"]
    held = [snap(0, sid="c0"), snap(2, sid="c2")]  # day 1 forgotten by the copy's policy
    assert [s.id for s in to_copy(primary, held)] == ["s3", "s4"]
    assert to_copy(primary, [snap(d, sid=f"c{d}") for d in range(5)]) == []


def test_a_copy_that_keeps_all_takes_every_snapshot_it_lacks():
    """No copy.retention: a snapshot older than the copy's newest that it lacks was
    stored out of order or lost by the copy, not forgotten by a policy."""
    primary = [snap(d) for d in range(5)]
    held = [snap(0, sid="c0"), snap(2, sid="c2")]
    assert [s.id for s in to_copy(primary, held, keeps_all=True)] == ["s1", "s3", "s4"]
    everything = [snap(d, sid=f"c{d}") for d in range(5)]
    assert to_copy(primary, everything, keeps_all=True) == []


def test_the_comparison_names_a_copy_that_fell_behind_diverged_or_holds_foreign_snapshots():
    primary = [snap(d) for d in range(4)]
    matching = [snap(d, sid=f"c{d}") for d in range(4)]
    assert compare(primary, matching, since=None).problems == []
    behind = compare(primary, matching[:2], since=primary[1].time)
    assert behind.missing == ["s2", "s3"]
    assert "lacks 2 snapshot(s) (s2, s3)" in behind.problems[0]
    # older ones the copy lacks are its own retention's business
    assert compare(primary, matching[2:], since=primary[1].time).missing == []
    changed = compare(primary, [*matching[:3], snap(3, tree="other", sid="c3")], since=None)
    assert changed.diverged == ["c3"]
    foreign = compare(primary, [*matching, snap(9, sid="x9")], since=primary[3].time)
    assert foreign.foreign == ["x9"] and "never had" in foreign.problems[0]
    # planted by another hand: an old date, or a twin of a copied one (no original)
    old = Snapshot("p0", T0 - dt.timedelta(days=400), None, tree="tp")
    twin = Snapshot("p3", primary[3].time, primary[3].stamp, tree="tq")
    planted = compare(primary, [*matching, old, twin], since=None)
    assert planted.foreign == ["p0", "p3"] and planted.diverged, planted


def write(tmp_path, text: str):
    pw = tmp_path / "pw"
    pw.write_text("p\n")
    pw.chmod(0o600)
    path = tmp_path / "server.yaml"
    path.write_text(f"backend:\n  password_file: {pw}\n{text}")
    return path


def test_where_each_hosts_copy_is(tmp_path):
    own = tmp_path / "own"
    own.write_text("o\n")
    own.chmod(0o600)
    config = load_server_config(
        write(
            tmp_path,
            "copy: {repository_root: /mnt/offsite}\n"
            f"hosts:\n  - name: web1\n  - {{name: db1, copy_repository: /elsewhere/db1, "
            f"copy_password_file: {own}}}\n  - {{name: app1, group: apps}}\n",
        )
    )
    backend = config.backend
    web1, db1, app1 = config.hosts
    assert locate(backend, web1, Role.COPY).value == "/mnt/offsite/web1"
    assert locate(backend, db1, Role.COPY).value == "/elsewhere/db1"
    assert locate(backend, app1, Role.COPY).value == "/mnt/offsite/apps"


def test_a_copy_without_a_place_or_a_host_copy_without_a_section_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_server_config(write(tmp_path, "copy: {max_age: 2d}\nhosts: [{name: web1}]\n"))
    assert "give repository_root or repository_url" in str(caught.value.problems[0])
    with pytest.raises(ConfigError) as caught:
        load_server_config(write(tmp_path, "hosts: [{name: web1, copy_repository: /x}]\n"))
    assert "without a copy: section" in str(caught.value.problems[0])


def test_a_borg_copy_is_a_mirror_of_the_primary_without_its_lock():

    from pullback.server.backends.borg import mirror_args, rsync_target
    from pullback.server.backends.errors import BackendError

    args = mirror_args(Path("/srv/repos/web1"), "/mnt/copy/web1")
    assert args[:3] == ["with-lock", "/srv/repos/web1", "rsync"]
    assert args[-2:] == ["/srv/repos/web1/", "/mnt/copy/web1/"]
    assert "--delete" in args and "/lock.exclusive" in args and "/lock.roster" in args
    assert rsync_target("/mnt/copy/web1") == ("/mnt/copy/web1", [])
    assert rsync_target("ssh://backup@store:2222/srv/borg/web1") == (
        "backup@store:/srv/borg/web1",
        ["-e", "ssh -p 2222"],
    )
    with pytest.raises(BackendError, match="a path or an ssh:// location"):
        rsync_target("rest:http://store/web1")


def test_the_rebuild_points_every_host_at_its_copy_with_the_copys_password(tmp_path):
    """docs/disaster-recovery.md's point-at-copies script, run on a server.yaml that
    places copies every way it can: afterwards each host's pull location and password
    are what its copy's were (the system tier runs the page on a simple one)."""
    import re
    import subprocess
    import sys

    from pullback.server.backends import make_backend
    from tests.helpers.fakes import ScriptedRunner

    page = (Path(__file__).parents[2] / "docs/disaster-recovery.md").read_text()
    step = re.search(r"<!-- step: point-at-copies -->\n```sh\n(.*?)```", page, re.S)[1]
    script = re.search(r"python3 - <<'EOF'\n(.*?)\nEOF\n", step, re.S)[1]

    def secret(name: str) -> Path:
        path = tmp_path / name
        path.write_text(f"{name}\n")
        path.chmod(0o600)
        return path

    own, copy_pw, web2_copy_pw, url = (secret(n) for n in ("own", "cp", "w2cp", "url"))
    path = write(
        tmp_path,
        "copy: {repository_url: 'rest:http://offsite:8000/{host}/', "
        f"password_file: {copy_pw}}}\n"
        f"hosts:\n  - {{name: web1, password_file: {own}}}\n"
        f"  - {{name: web2, copy_password_file: {web2_copy_pw}, repository: /srv/w2}}\n"
        f"  - {{name: db1, copy_repository_file: {url}}}\n",
    )
    before = load_server_config(path)

    def where(config, role):
        return {
            h.name: (
                locate(config.backend, h, role).shown,
                make_backend(
                    config.backend, h, tmp_path, ScriptedRunner(), role=role
                ).password_file,
            )
            for h in config.hosts
        }

    copies = where(before, Role.COPY)
    script = script.replace("/etc/pullback/server.yaml", str(path))
    subprocess.run([sys.executable, "-c", script], check=True)
    assert where(load_server_config(path), Role.PULL) == copies
    assert copies["web1"][1] == copy_pw and copies["web2"][1] == web2_copy_pw


def test_a_copy_on_a_primary_repository_is_refused(tmp_path):
    for text in (
        "copy: {repository_root: /var/lib/pullback/repositories}\nhosts: [{name: web1}]\n",
        "copy: {repository_root: /mnt/c}\n"
        "hosts: [{name: web1, repository: /srv/r/web1, copy_repository: /srv/r/web1/}]\n",
        "copy: {repository_root: /mnt/c}\n"
        "hosts: [{name: web1}, {name: web2, copy_repository: /var/lib/pullback/repositories}]\n",
    ):
        with pytest.raises(ConfigError) as caught:
            load_server_config(write(tmp_path, text))
        assert "a second copy must be somewhere else" in str(caught.value.problems[0]), text


def test_a_borg_mirror_never_writes_over_something_else(tmp_path):
    from pullback.server.backends.borg import refuse_foreign_target
    from pullback.server.backends.errors import BackendError

    primary, target = tmp_path / "primary", tmp_path / "target"
    primary.mkdir()
    (primary / "config").write_text("[repository]\nversion = 1\nid = abc123\n")
    refuse_foreign_target(primary, target)  # not there yet
    target.mkdir()
    refuse_foreign_target(primary, target)  # empty
    (target / "config").write_text("[repository]\nversion = 1\nid = abc123\n")
    refuse_foreign_target(primary, target)  # the twin, from an earlier run
    (target / "config").write_text("[repository]\nversion = 1\nid = other\n")
    with pytest.raises(BackendError, match="a borg copy would delete it"):
        refuse_foreign_target(primary, target)
    (target / "config").unlink()
    (target / "IMPORTANT.txt").write_text("not a repository")
    with pytest.raises(BackendError, match="holds something else"):
        refuse_foreign_target(primary, target)


def test_a_failed_drill_of_the_copy_stays_a_problem_and_is_tried_again(tmp_path):
    import json

    from pullback.common.clock import iso
    from pullback.server.copy import copy_drill_due
    from pullback.server.fleet_view import copy_view

    now = dt.datetime.now(dt.UTC)
    entry = {
        "copy": {
            "result": "ok",
            "newest": iso(now),
            "copied": iso(now),
            "verify_attempt": iso(now),
            "verify_result": "failed",
            "verify_summary": "2 files differ",
        }
    }
    assert copy_view(entry, 3 * 86400, now).complaint == (
        "copy failed: the last drill of the copy failed: 2 files differ"
    )
    config = load_server_config(
        write(
            tmp_path,
            f"state_dir: {tmp_path}/state\n"
            "copy: {repository_root: /c}\nhosts: [{name: web1}]\n",
        )
    )
    (tmp_path / "state").mkdir()
    (tmp_path / "state/status.json").write_text(json.dumps({"hosts": {"web1": entry}}))
    assert copy_drill_due(config, config.hosts[0], now), "tried again on the next run"
    entry["copy"]["verify_result"] = "ok"
    (tmp_path / "state/status.json").write_text(json.dumps({"hosts": {"web1": entry}}))
    assert not copy_drill_due(config, config.hosts[0], now)


def test_the_copys_cell_says_what_needs_attention():
    """An outside walk: a copy whose last run or drill failed read "copied 8s ago,
    drilled 17m ago" like a good one; the failure was only above the table."""
    from pullback.common.clock import iso
    from pullback.server.fleet_view import copy_view

    now = dt.datetime.now(dt.UTC)
    good = {"copy": {"result": "ok", "newest": iso(now), "copied": iso(now), "verified": iso(now)}}
    text = copy_view(good, 3 * 86400, now).text
    assert text.startswith("copied ") and ", drilled " in text and ";" not in text, text
    failed = {"copy": {**good["copy"], "result": "failed", "reason": "diverged"}}
    assert copy_view(failed, 3 * 86400, now).text.endswith("; failed")
    old = now - dt.timedelta(days=5)
    stale = {"copy": {**good["copy"], "newest": iso(old)}}
    assert copy_view(stale, 3 * 86400, now).text.endswith("; stale")
    assert copy_view({}, 3 * 86400, now).text == "never copied"


def test_the_copys_recorded_words_are_printed_escaped_and_a_date_ahead_is_stale(tmp_path):
    """An outside attack: a hostile copy store's words (escape sequences) reached the
    status table, the page and the mail raw; a copy whose newest snapshot is dated in
    the future never grew stale (the primary's has the AHEAD rule)."""
    from pullback.common.clock import iso
    from pullback.server import metrics
    from pullback.server.fleet_view import copy_view

    now = dt.datetime.now(dt.UTC)
    hostile = "400 Bad\x1b]52;c;eA==\x07\x1b[2JRequest" + "x" * 5000
    base = {"newest": iso(now), "copied": iso(now), "verified": iso(now)}
    for record in (
        {"result": "failed", "reason": hostile},
        {"result": "ok", "verify_result": "failed", "verify_summary": hostile},
        {"result": "ok", "maintain_result": "failed", "maintain_reason": hostile},
        {"result": "ok", "guard_hold": {"reason": hostile}},
    ):
        view = copy_view({"copy": {**base, **record}}, 3 * 86400, now)
        for said in (view.problem, view.held):
            assert said is None or ("\x1b" not in said and len(said) < 400), said
        assert "\\x1b]52" in (view.problem or view.held or ""), record
    ahead = {"copy": {**base, "newest": "2099-01-01T00:00:00Z"}}
    assert copy_view(ahead, 3 * 86400, now).stale
    config = load_server_config(
        write(
            tmp_path,
            f"state_dir: {tmp_path}/state\n"
            "copy: {repository_root: /c}\nhosts: [{name: web1}]\n",
        )
    )
    text = metrics.build(config, {"hosts": {"web1": ahead}}, now).render()
    assert 'pullback_copy_stale{host="web1"} 1' in text, text


def test_a_copy_store_that_cannot_be_read_is_not_taken_for_a_moved_copy(tmp_path):
    """A location file unusable for one run (mode 0644 after an edit) named no store:
    its record stays the copy's record (the run fails, nothing is started anew), and a
    missing copy it held snapshots for is still refused, not made again."""
    import json

    from pullback.common.outcome import Status
    from pullback.common.runner import Runner
    from pullback.server import status_file
    from pullback.server.backends import make_backend
    from pullback.server.copy import CopyResult, gone, location_id, store_of

    url = tmp_path / "copy-url"
    url.write_text(f"{tmp_path}/offsite/web1\n")
    url.chmod(0o600)
    config = load_server_config(
        write(
            tmp_path,
            f"state_dir: {tmp_path}/state\n"
            "copy: {repository_root: /c}\n"
            f"hosts: [{{name: web1, copy_repository_file: {url}}}]\n",
        )
    )
    host = config.hosts[0]

    def backend():
        return make_backend(config.backend, host, config.state_dir, Runner(), 1.0, Role.COPY)

    store = store_of(backend())
    assert store == location_id(f"{tmp_path}/offsite/web1")
    (tmp_path / "state").mkdir()
    record = {"location": store, "snapshots": 4, "newest": "2026-12-01T00:00:00Z"}
    (tmp_path / "state/status.json").write_text(json.dumps({"hosts": {"web1": {"copy": record}}}))
    url.chmod(0o644)
    assert store_of(backend()) is None
    assert "is gone, yet it held 4 snapshot(s)" in gone(config, "web1", backend())
    failed = CopyResult("web1", Status.FAILED, problems=["unreadable"], location=None)
    status_file.record_copies(config.state_dir, [failed])
    kept = status_file.load_status(config.state_dir)["hosts"]["web1"]["copy"]
    assert (kept["location"], kept["snapshots"], kept["result"]) == (store, 4, "failed")
    url.chmod(0o600)
    url.write_text(f"{tmp_path}/elsewhere/web1\n")
    assert gone(config, "web1", backend()) is None, "another store: the copy moved"
