"""backup-suite's service files work unchanged (issue 17, point 1): every key its plugins
read or its documentation names is accepted and either implemented or warned about
(``x-backup-suite`` in the schemas, one generic warning naming file, line, key and what
pullback does instead); a misspelt key is still an error. The univention task runs with
a stand-in for UCS's ``univention-backup`` on PATH (no UCS system is needed)."""

from __future__ import annotations

import logging
import os
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pullback.client.check import check
from pullback.client.config import load_client_config
from pullback.client.services import load_service
from pullback.client.stages import make_tasks, run_service
from pullback.common.archive.writer import ArchiveWriter
from pullback.common.signals import SignalGuard
from pullback.plugins._common import split_options
from pullback.plugins.manager import load_plugins
from pullback.plugins.task import RestorePlan

RSYNC_WARNING = "files.rsync_options: accepted for backup-suite ('--acls --xattrs'), not applied"

# Every key of backup-suite 0.2: what its plugins read (lib/plugins/*.sh) and what its
# plugins/README.md and example service files document; one file per plugin.
BACKUP_SUITE_FILES = {
    "docker/tandoor/service.yaml": """\
        service: {name: tandoor_recipes, type: docker}
        docker:
          docker_compose_path: /opt/tandoor/docker-compose.yml
          wait_after_restart: 30
          pin_images_to_digest: true
        postgresql:
          host: localhost
          user: tandoor
          database: tandoor
          port: 5432
          dump_options: "--clean --if-exists"
        files:
          paths: [/opt/tandoor/mediafiles/, /opt/tandoor/config.ini]
          exclude: [cache/, "*.log", mediafiles/large_video.mp4]
          rsync_options: "--acls --xattrs"
        """,
    "docker/readme/service.yaml": """\
        service: {name: MyWebAppService}
        docker:
          compose_file: /opt/my_webapp/docker-compose.yml
          project_directory: /opt/my_webapp
          stop_services: true
          stop_wait_seconds: 20
          backup_config: true
          pin_images: true
        postgresql: {database: my_webapp_db, username: webapp, hostname: localhost, port: 5432}
        """,
    "db/maria/service.yml": """\
        service: {name: maria}
        mariadb: {host: db, user: app, database: app, port: 3306, dump_options: "--quick"}
        """,
    "db/mysql/service.yml": """\
        service: {name: mysql}
        mysql: {hostname: db, username: app, database: app, port: 3306, dump_options: ""}
        """,
    "tsdb/influx/service.yaml": """\
        service: {name: influx}
        influxdb: {host: "http://localhost:8086", token: t0ken-value, org: home, bucket: m}
        """,
    "ucs/dc/service.yaml": """\
        service: {name: dc, type: ucs}
        univention:
          univention_backup_options: "--quiet"
          custom_paths: [/etc/univention/ssl]
          custom_exclude: ["*.old"]
        """,
}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("rel", sorted(BACKUP_SUITE_FILES))
def test_every_backup_suite_key_is_accepted(tmp_path, plugins, rel):
    path = put(tmp_path / rel, BACKUP_SUITE_FILES[rel])
    service = load_service(path, plugins)
    assert service.problems == []
    written = yaml.safe_load(path.read_text())
    assert {t.key for t in service.tasks} == set(written) - {"service"}  # no task dropped
    for task in service.tasks:  # every key kept as written, none renamed away
        assert {k: task.config[k] for k in written[task.key]} == written[task.key]


def test_only_rsync_options_is_warned_about(tmp_path, plugins):
    warnings = []
    for rel, text in BACKUP_SUITE_FILES.items():
        warnings += [str(w) for w in load_service(put(tmp_path / rel, text), plugins).warnings]
    path = tmp_path / "docker/tandoor/service.yaml"
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}:15: {RSYNC_WARNING}: pullback runs no rsync")
    assert "exclude" in warnings[0]


def test_the_warning_reaches_check(tmp_path):
    services = tmp_path / "services"
    text = f"service: {{name: share}}\nfiles: {{paths: [{tmp_path}], rsync_options: -A}}\n"
    put(services / "files/share/service.yml", text)
    config_file = tmp_path / "client.yaml"
    config_file.write_text(
        f"service_dirs: [{services}]\narchive_dir: {tmp_path / 'a'}\nwork_dir: {tmp_path / 'w'}\n"
        f"lock_dir: {tmp_path / 'l'}\n"
    )
    result = check(load_client_config(config_file))
    assert result.problems == []
    assert [w.split(": pullback")[0] for w in result.warnings] == [
        f"{services}/files/share/service.yml:2: {RSYNC_WARNING.replace('--acls --xattrs', '-A')}"
    ]


def test_the_warning_reaches_the_log_and_the_sidecar(tmp_path, plugins, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "kept.txt").write_text("x")
    text = f"""\
        service: {{name: share}}
        files: {{paths: [{data}], rsync_options: "--acls --xattrs"}}
        """
    service = load_service(put(tmp_path / "svc/service.yaml", text), plugins)
    archive = tmp_path / "h-20260101T000000Z.tar"
    with caplog.at_level(logging.WARNING), ArchiveWriter(archive, "none") as writer:
        report = run_service(service, plugins, writer, tmp_path / "staging", SignalGuard())
        writer.finish()
    assert report.status == "ok"  # a warning, never a skipped service
    assert [w.split(": pullback")[0] for w in report.tasks[0].warnings] == [RSYNC_WARNING]
    assert RSYNC_WARNING in caplog.text


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "files: {paths: [/etc], rsync_option: -a}",
            "files.rsync_option: unknown key (did you mean 'rsync_options'?)",
        ),
        ("docker: {docker_compose_path: /x.yml, wait_after_rstart: 3}", "wait_after_rstart"),
        ("univention: {custom_path: [/etc]}", "univention.custom_path: unknown key"),
        ("univension: {}", "unknown task 'univension' (did you mean 'univention'?)"),
        ("postgresql: {database: a, dump_option: x}", "postgresql.dump_option: unknown key"),
    ],
)
def test_a_misspelt_key_is_still_an_error(tmp_path, plugins, text, expected):
    service = load_service(
        put(tmp_path / "x/service.yaml", f"service: {{name: x}}\n{text}\n"), plugins
    )
    assert service.broken
    assert any(expected in str(p) for p in service.problems), service.problems


def test_secret_values_are_never_quoted_in_a_warning(tmp_path):
    from pullback.client.services import backup_suite_notes
    from pullback.common.yamlfile import load

    schema = {
        "properties": {
            "pin": {"x-backup-suite": "not used", "x-secret": True},
            "plain": {"x-backup-suite": "not used either"},
        }
    }
    doc = load(put(tmp_path / "s.yaml", "t: {pin: hunter2, plain: shown}\n"))
    notes = [str(n) for n in backup_suite_notes(doc, schema, ("t",))]
    assert notes == [
        f"{doc.path}:1: t.pin: accepted for backup-suite, not applied: not used",
        f"{doc.path}:1: t.plain: accepted for backup-suite ('shown'), not applied: not used either",
    ]


@pytest.mark.parametrize(
    "text, argv",
    [
        ("--clean --if-exists", ["--clean", "--if-exists"]),
        ("--exclude-table='audit log'", ["--exclude-table=audit log"]),
        ("--comment=it's", ["--comment=it's"]),  # backup-suite's read -a: split at whitespace
        ("", []),
    ],
)
def test_dump_options_become_an_argument_list_without_a_shell(text, argv):
    assert split_options(text) == argv


# -- univention ---------------------------------------------------------------------------

STAND_IN = """\
#!/bin/sh
# stands in for UCS's univention-backup: records its arguments, writes an archive
echo "$@" > "{calls}"
[ "$1" = --fail ] && {{ echo "LDAP is down" >&2; exit 3; }}
[ "$1" = --nothing ] && exit 0
echo ucs > "{backup_dir}/ucs-backup-new.tar.gz"
"""


@pytest.fixture
def ucs(tmp_path, monkeypatch):
    """A stand-in univention-backup on PATH, its backup directory with an older archive,
    and a custom tree; returns the paths."""
    bin_dir, backup_dir, custom = tmp_path / "bin", tmp_path / "ucs-backups", tmp_path / "ssl"
    for directory in (bin_dir, backup_dir, custom):
        directory.mkdir()
    program = bin_dir / "univention-backup"
    calls = tmp_path / "calls"
    program.write_text(STAND_IN.format(calls=calls, backup_dir=backup_dir))
    program.chmod(0o755)
    old = backup_dir / "ucs-backup-old.tar.bz2"
    old.write_text("old")
    os.utime(old, (time.time() - 86400, time.time() - 86400))
    (backup_dir / "notes.txt").write_text("not an archive")
    (custom / "ca.pem").write_text("pem")
    (custom / "ca.pem.old").write_text("old pem")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return {"dir": backup_dir, "custom": custom, "calls": calls, "root": tmp_path}


def ucs_service(ucs, plugins, options: str = "--quiet --verbose", command="univention-backup"):
    text = f"""\
        service: {{name: dc}}
        univention:
          univention_backup_options: "{options}"
          backup_dir: {ucs["dir"]}
          custom_paths: [{ucs["custom"]}, /nonexistent/custom]
          custom_exclude: ["*.old"]
          command: {command}
        """
    service = load_service(put(ucs["root"] / "svc/service.yaml", text), plugins)
    assert service.problems == [] and service.warnings == []
    return service


def run_ucs(ucs, plugins, service):
    archive = ucs["root"] / f"h-{time.time_ns()}.tar"
    with ArchiveWriter(archive, "none") as writer:
        report = run_service(service, plugins, writer, ucs["root"] / "staging", SignalGuard())
        writer.finish()
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile() and m.name.startswith("services/")]
    return report, names


def test_univention_archives_the_newest_backup_and_the_custom_paths(ucs, plugins):
    report, names = run_ucs(ucs, plugins, ucs_service(ucs, plugins))
    assert report.status == "ok", report.error
    assert ucs["calls"].read_text().split() == ["--quiet", "--verbose"]  # no shell, split
    base = "services/dc/univention"
    assert set(names) == {
        f"{base}{ucs['dir']}/ucs-backup-new.tar.gz",  # the newest only, not the old .tar.bz2
        f"{base}{ucs['custom']}/ca.pem",  # ca.pem.old is excluded
    }
    assert report.tasks[0].warnings == ["custom path /nonexistent/custom does not exist; skipped"]


def test_univention_says_when_no_new_archive_was_written(ucs, plugins):
    report, _ = run_ucs(ucs, plugins, ucs_service(ucs, plugins, "--nothing"))
    assert report.status == "ok"
    assert any(
        "ucs-backup-old.tar.bz2 is older than this run" in w for w in report.tasks[0].warnings
    )
    (ucs["dir"] / "ucs-backup-old.tar.bz2").unlink()
    report, _ = run_ucs(ucs, plugins, ucs_service(ucs, plugins, "--nothing"))
    assert report.status == "failed" and "no *.tar.gz or *.tar.bz2 in" in report.error


def test_univention_failing_program_fails_the_service_with_its_words(ucs, plugins):
    report, _ = run_ucs(ucs, plugins, ucs_service(ucs, plugins, "--fail"))
    assert report.status == "failed"
    assert "univention-backup failed: LDAP is down" in report.error


def test_univention_without_its_program_is_a_problem(ucs, plugins):
    service = ucs_service(ucs, plugins, command="no-such-ucs-backup")
    report, _ = run_ucs(ucs, plugins, service)
    assert report.status == "failed"
    assert "no-such-ucs-backup is not installed" in report.error


def test_univention_restore_puts_custom_paths_back_and_names_the_system_backup(ucs, plugins):
    service = ucs_service(ucs, plugins)
    source = ucs["root"] / "restored"
    copy = source / str(ucs["custom"]).lstrip("/")
    copy.mkdir(parents=True)
    (copy / "ca.pem").write_text("pem")
    system = source / str(ucs["dir"]).lstrip("/")
    system.mkdir(parents=True)
    (system / "ucs-backup-new.tar.gz").write_text("ucs")
    target = ucs["root"] / "target"
    (task,) = make_tasks(service, ucs["root"] / "staging", None)
    plan = RestorePlan(stamp="20260101T000000Z")
    plugins.call("restore", task, source=source, target=target, dry_run=False, plan=plan)
    assert (target / str(ucs["custom"]).lstrip("/") / "ca.pem").read_text() == "pem"
    assert plan.notes == [
        f"UCS's system backup is {system / 'ucs-backup-new.tar.gz'}: restore it with UCS's "
        "own tools"
    ]
