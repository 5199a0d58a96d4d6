"""Which snapshots a copy takes, and how the copy is compared with its primary."""

from __future__ import annotations

import datetime as dt

import pytest

from pullback.common.errors import ConfigError
from pullback.server.backends import Role, Snapshot
from pullback.server.backends.location import locate
from pullback.server.config import load_server_config
from pullback.server.copy import compare, to_copy

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)


def snap(day: int, tree: str | None = None, sid: str | None = None) -> Snapshot:
    when = T0 + dt.timedelta(days=day)
    return Snapshot(sid or f"s{day}", when, f"{when:%Y%m%dT%H%M%SZ}", tree=tree or f"t{day}")


def test_a_copy_takes_what_it_lacks_newer_than_its_newest():
    primary = [snap(d) for d in range(5)]
    assert [s.id for s in to_copy(primary, [])] == ["s0", "s1", "s2", "s3", "s4"]
    held = [snap(0, sid="c0"), snap(2, sid="c2")]  # day 1 forgotten by the copy's policy
    assert [s.id for s in to_copy(primary, held)] == ["s3", "s4"]
    assert to_copy(primary, [snap(d, sid=f"c{d}") for d in range(5)]) == []


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
    from pathlib import Path

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
