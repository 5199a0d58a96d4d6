"""Which configured outputs a timer run may write: the units' ReadWritePaths= rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pullback.common.sandbox import output_problem
from tests.helpers.namespaces import in_mount_namespace

UNIT = "pullback-server.service"


def test_an_output_below_a_writable_path_is_fine(tmp_path):
    allowed = [str(tmp_path / "state"), f"-{tmp_path / 'www'}"]
    (tmp_path / "www").mkdir()
    (tmp_path / "state").mkdir()
    assert output_problem("status_page", tmp_path / "www" / "index.html", UNIT, allowed) is None
    assert output_problem("metrics_file", tmp_path / "state" / "m.prom", UNIT, allowed) is None
    assert output_problem("metrics_file", tmp_path / "m.prom", UNIT, None) is None  # no systemd


def test_outside_the_units_paths_says_how_to_allow_it(tmp_path):
    problem = output_problem("metrics_file", tmp_path / "m" / "x.prom", UNIT, ["/var/lib/pullback"])
    assert problem == (
        f"metrics_file: {tmp_path}/m/x.prom is outside the ReadWritePaths= of {UNIT}, so its "
        "timer runs cannot write it (runs by hand can): choose a path below /var/lib/pullback, "
        f"or allow it: systemctl edit {UNIT} and add [Service] ReadWritePaths={tmp_path}/m"
    )


def test_an_optional_path_that_does_not_exist_yet_must_be_created(tmp_path):
    www = tmp_path / "www" / "pullback"
    problem = output_problem("status_page", www / "index.html", UNIT, [f"-{www}"])
    assert (
        problem == f"status_page: {UNIT} may write below {www} only once it exists: mkdir -p {www}"
    )


def test_a_directory_systemd_makes_for_the_unit_need_not_exist_yet(tmp_path):
    """``CacheDirectory=pullback``: systemd makes /var/cache/pullback when the unit starts,
    so the file cache of a fresh installation is no problem before the first run."""
    from pullback.common.sandbox import MADE_BY_SYSTEMD

    cache = tmp_path / "cache" / "pullback"
    allowed = [f"{MADE_BY_SYSTEMD}{cache}", f"-{tmp_path}/other", f"-{cache}"]  # as the unit
    assert output_problem("incremental.cache_dir", cache / "files.db", UNIT, allowed) is None
    assert not cache.exists()


def test_the_path_to_choose_is_shown_without_its_unit_marks(tmp_path):
    """Found by a newcomer: "choose a path below ~/var/cache/pullback" (the mark of a
    directory systemd makes leaked, and read as a home directory)."""
    from pullback.common.sandbox import MADE_BY_SYSTEMD

    allowed = [f"{MADE_BY_SYSTEMD}/var/cache/pullback", "-/var/lib/pullback"]
    problem = output_problem("incremental.cache_dir", tmp_path / "c" / "files.db", UNIT, allowed)
    assert problem is not None and "choose a path below /var/cache/pullback, " in problem


def test_a_directory_that_is_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    problem = output_problem("metrics_file", tmp_path / "file" / "m.prom", UNIT, None)
    assert problem == f"metrics_file: {tmp_path}/file is not writable"


def test_an_output_in_the_units_private_tmp_is_refused_even_when_allowed(tmp_path):
    """An outside walk: metrics_file: /tmp/pullback.prom was never there for anyone to
    read (the unit's PrivateTmp=yes), while every run said success; check advised a
    ReadWritePaths=/tmp drop-in, which changes nothing."""
    from pullback.common.sandbox import PRIVATE, repository_problem

    allowed = ["/var/lib/pullback", "/tmp", f"{PRIVATE}/tmp", f"{PRIVATE}/var/tmp"]
    problem = output_problem("metrics_file", Path("/tmp/pullback.prom"), UNIT, allowed)
    assert problem == (
        f"metrics_file: /tmp/pullback.prom is in {UNIT}'s own /tmp (PrivateTmp=yes), thrown "
        "away when each run ends: choose a path below /var/lib/pullback"
    )
    said = repository_problem(Path("/var/tmp/repos/web1"), {UNIT: allowed, "other": None})
    assert said == (
        f"/var/tmp/repos/web1 is in the private /tmp of {UNIT} (PrivateTmp=yes), thrown away "
        "when each run ends: choose a directory that lasts"
    )
    assert output_problem("metrics_file", tmp_path / "m.prom", UNIT, None) is None


PRIVATE_TMP_WRITE = """
import sys
from pathlib import Path
from pullback.common.metrics import Metrics
try:
    Metrics().write(Path("/var/tmp/pullback.prom"))
except OSError as exc:
    print(exc.strerror)
    sys.exit(1)
print("written")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_a_run_in_a_private_tmp_does_not_write_its_metrics_there(tmp_path):
    """What systemd's PrivateTmp=yes does, done by hand: a private mount namespace with a
    directory named as systemd names it bound over /var/tmp. The write fails in words (the
    run then exits 1 and says the output was not written)."""
    private = tmp_path / "systemd-private-0123abcd-pullback-server.service-XyZ" / "tmp"
    private.mkdir(parents=True)
    # over /var/tmp, not /tmp: a checkout (and its venv) may live below /tmp
    done = in_mount_namespace(f"mount --bind {private} /var/tmp", PRIVATE_TMP_WRITE)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip() == (
        "/var/tmp is this unit's own (PrivateTmp=yes), thrown away when the run ends: "
        "choose another directory"
    )
    assert not (private / "pullback.prom").exists()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PRIVATE_TMP_WRITE.replace("/tmp/pullback.prom", str(tmp_path / "m")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "written", done.stderr


def test_one_metrics_file_for_client_and_server_on_one_machine_is_refused(tmp_path):
    """An outside walk: with the doc's example path in both server.yaml and client.yaml,
    both checks said ok, and each run's file replaced the other side's gauges."""
    from pullback.common.sandbox import shared_metrics_file

    other = tmp_path / "client.yaml"
    prom = Path("/var/lib/prometheus/node-exporter/pullback.prom")
    assert shared_metrics_file(prom, other) is None  # no other side here
    other.write_text(f"metrics_file: {prom.parent}/./pullback.prom\n")
    assert shared_metrics_file(prom, other) == (
        f"metrics_file: {prom} is also the metrics_file of {other}: each side's runs rewrite "
        "it and the other's gauges vanish; give each its own file (e.g. pullback.prom and "
        "pullback-client.prom)"
    )
    other.write_text(f"metrics_file: {prom.parent}/pullback-client.prom\n")
    assert shared_metrics_file(prom, other) is None
    other.write_text("metrics_file: [unclosed\n")
    assert shared_metrics_file(prom, other) is None  # its own check names its syntax


def test_an_output_is_judged_where_it_lands_and_a_readable_directory_suggested(tmp_path):
    """An outside attack: node-exporter/t -> /tmp passed check ("writable") and the file
    went to the unit's private /tmp; /tmp/../var/... was refused as in /tmp; check
    suggested /var/cache/pullback (root's 0700) for a metrics file node_exporter reads.
    (The private directory here is one of the test's own: pytest's are below /tmp.)"""
    from pullback.common.sandbox import PRIVATE, shared_metrics_file

    exporter, private = tmp_path / "node-exporter", tmp_path / "ptmp"
    exporter.mkdir()
    private.mkdir()
    (exporter / "t").symlink_to(private)
    allowed = ["~/var/cache/pullback", str(exporter), f"{PRIVATE}{private}"]
    problem = output_problem("metrics_file", exporter / "t" / "c.prom", "u", allowed)
    assert problem == (
        f"metrics_file: {exporter}/t/c.prom (which is {private}/c.prom) is in u's own "
        f"{private} (PrivateTmp=yes), thrown away when each run ends: choose a path below "
        f"{exporter}"
    )
    back = private / ".." / "node-exporter" / "c.prom"
    assert output_problem("metrics_file", back, "u", allowed) is None
    (exporter / "x").symlink_to(".")
    other = tmp_path / "server.yaml"
    other.write_text(f"metrics_file: {exporter}/pullback.prom\n")
    assert shared_metrics_file(exporter / "x" / "pullback.prom", other) is not None
