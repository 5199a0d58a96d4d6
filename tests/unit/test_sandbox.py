"""Which configured outputs a timer run may write: the units' ReadWritePaths= rule."""

from __future__ import annotations

from pullback.common.sandbox import output_problem

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
