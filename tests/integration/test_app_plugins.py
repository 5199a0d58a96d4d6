"""docker, systemd, mongodb and influxdb tasks, and pullback-client restore.

A Docker engine, systemd as PID 1, the MongoDB tools and InfluxDB 2 cannot run on the test
machine, so ``docker``, ``systemctl``, ``mongodump`` and ``influx`` are recording stand-ins
(tests/standins/standin.py) placed first on PATH; the tests assert the exact calls.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile

import pytest

from tests.helpers.client import ClientSandbox
from tests.helpers.tree import make_rich_tree, snapshot


def short(call: dict) -> str:
    """A call without the options every compose call has (``-f FILE --project-directory
    DIR --profile *``: test_every_compose_call_enables_every_profile checks them)."""
    args = [
        a
        for a in call["args"]
        if not a.startswith("/") and a not in ("-f", "--project-directory", "--profile", "*")
    ]
    return " ".join([call["program"], *args])


@pytest.fixture
def app(tmp_path):
    compose = tmp_path / "app" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text("services:\n  web: {image: nginx:1.25}\n  db: {image: postgres:15}\n")
    (compose.parent / ".env").write_text("DB_PASSWORD=from-env-file\n")
    return compose


def test_stop_dump_start_order_and_start_after_a_failed_dump(tmp_path, standins, app):
    standins.set(
        running=["web", "db"],
        active=["app.service"],
        images={"web": "nginx:1.25", "db": "postgres:15"},
    )
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        docker:
          docker_compose_path: {app}
          wait_after_restart: 0
          pin_images_to_digest: true   # backup-suite's name of pin_images
        systemd:
          units: [app.service, worker.service]
        command:
          dump: ["echo 'the dump breaks' >&2; exit 3"]
        """,
    )
    result = box.cli("run", env=standins.env)
    assert result.returncode == 1
    assert [short(c) for c in standins.calls()] == [
        "systemctl show --property=LoadState app.service worker.service",  # (validate)
        "docker compose ps --services --status running",
        "docker compose stop web db",
        "systemctl is-active --quiet app.service",
        "systemctl is-active --quiet worker.service",
        # the units a stop of app.service would take down with it
        "systemctl show --property=RequiredBy app.service",
        "systemctl show --property=RequisiteOf app.service",
        "systemctl show --property=BoundBy app.service",
        "systemctl show --property=ConsistsOf app.service",
        "systemctl stop app.service",
        "docker compose config --format json",
        "docker image inspect --format {{json .RepoDigests}} nginx:1.25",
        "docker image inspect --format {{json .RepoDigests}} postgres:15",
        # the command dump failed here; what was stopped is started, in reverse order
        "systemctl start app.service",
        "docker compose config --services",  # what the compose file defines now
        "docker compose start web db",
    ]
    (archive,) = box.published()
    services = box.sidecar(archive)["services"]
    tasks = {t["type"]: t for t in services[0]["tasks"]}
    assert tasks["docker"]["status"] == "ok"
    assert tasks["command"]["status"] == "failed"
    from pullback.common.archive.reader import verify_archive

    names = set(verify_archive(archive).manifest)
    assert {
        "services/shop/docker/docker-compose.yml",
        "services/shop/docker/.env",
        "services/shop/docker/images.json",
        "services/shop/docker/docker-compose.pinned.yml",
    } <= names


def test_every_compose_call_enables_every_profile(tmp_path, standins):
    """A running service with ``profiles:`` (started with ``--profile jobs up -d``) is
    stopped and started again like the others: every compose call enables every profile
    (``--profile '*'``; the stand-in answers ``config --services`` as Compose v2 does,
    listing a profile's services only when it is enabled). Without it the run stopped
    the worker, found it "no longer in" the compose file and never started it (h126)."""
    compose = tmp_path / "app" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text(
        "services:\n  web: {image: nginx}\n  worker: {image: busybox, profiles: [jobs]}\n"
    )
    standins.set(running=["web", "worker"])
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop", f"service: {{name: shop}}\ndocker: {{docker_compose_path: {compose}}}\n"
    )
    result = box.cli("run", env=standins.env)
    assert result.returncode == 0, result.stderr
    calls = standins.calls()
    assert [short(c) for c in calls] == [
        "docker compose ps --services --status running",
        "docker compose stop web worker",
        "docker compose config --services",
        "docker compose start web worker",
    ]
    for call in calls:
        at = call["args"].index("--profile")
        assert call["args"][at + 1] == "*" and at < call["args"].index("compose") + 6, call
    assert "no longer in" not in result.stderr


def test_the_dump_follows_no_symlink_the_application_s_owner_planted(tmp_path, standins):
    """The application directory is its user's (nobody): its ``.env`` made a symlink to a
    file of root's is not read into the archive; the task fails and says why, and what
    it stopped is started again (h126; the files task refuses the same)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: ownership of the application directory")
    base = tmp_path / "srv"
    base.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    secret = base / "root-only"
    secret.write_text("root:$6$SECRET-HASH:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    app = base / "app"
    app.mkdir()
    (app / "docker-compose.yml").write_text("services:\n  web: {image: nginx}\n")
    os.symlink(secret, app / ".env")
    for path in (app, app / "docker-compose.yml"):
        os.chown(path, 65534, 65534, follow_symlinks=False)
    os.chown(app / ".env", 65534, 65534, follow_symlinks=False)
    standins.set(running=["web"])
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\ndocker: {{docker_compose_path: {app}/docker-compose.yml}}\n",
    )
    result = box.cli("run", env=standins.env)
    assert result.returncode == 1, result.stderr
    said = f"{app}/.env: not archived: {app}/.env is a symlink another user could have made"
    assert said in result.stderr, result.stderr
    assert [short(c) for c in standins.calls()][-1] == "docker compose start web"
    for archive in box.published():
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.isfile():
                    assert b"SECRET-HASH" not in tar.extractfile(member).read()


def test_a_huge_sparse_env_is_refused_not_written_out(tmp_path, standins, app):
    """A ``.env`` its owner made a sparse terabyte: refused by its size (16 MiB at most),
    never copied into the work directory (h126: 256 MiB of real disk for 0 on disk)."""
    with open(app.parent / ".env", "wb") as env:
        env.truncate(1 << 40)
    standins.set(running=[])
    box = ClientSandbox(tmp_path / "client")
    box.add_service("shop", f"service: {{name: shop}}\ndocker: {{docker_compose_path: {app}}}\n")
    result = box.cli("run", env=standins.env)
    assert result.returncode == 1, result.stderr
    assert f"{app.parent}/.env: not archived: larger than 16 MiB" in result.stderr
    assert box.leftovers() == []


def test_a_failed_stop_still_starts_what_was_stopped_before(tmp_path, standins, app):
    standins.set(running=["web"], active=["app.service"], fail_stop=True)
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"""\
        service: {{name: shop}}
        systemd: {{units: [app.service]}}
        docker: {{compose_file: {app}}}
        """,
    )
    result = box.cli("run", env=standins.env)
    assert result.returncode == 1
    calls = [short(c) for c in standins.calls()]
    assert calls[-4:] == [
        "docker compose stop web",  # fails: some may have stopped
        "docker compose config --services",
        "docker compose start web",
        "systemctl start app.service",
    ]
    assert "prepare failed" in result.stderr


def test_a_docker_task_that_archives_nothing_is_restored_by_stopping_and_starting(
    tmp_path, standins, app
):
    """With ``backup_config: false`` and no pinned images the docker task archives
    nothing: a restore stops and starts the application around the files and warns
    nothing (an outside walk saw "docker: nothing to restore" on every restore). The
    docker engine is a recording stand-in (no Docker here)."""
    standins.set(running=["web"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\ndocker: {{compose_file: {app}, backup_config: false}}\n"
        f"files: {{paths: [{data}]}}\n",
    )
    assert box.cli("run", env=standins.env).returncode == 0
    (archive,) = box.published()
    (data / "a.txt").write_text("edited")
    result = box.cli("restore", "--service", "shop", "--from", str(archive), env=standins.env)
    assert result.returncode == 0, result.stderr
    assert "nothing to restore" not in result.stderr and " WARNING " not in result.stderr
    assert (data / "a.txt").read_text() == "a"
    calls = [short(c) for c in standins.calls()]
    assert calls[-3:] == [
        "docker compose stop web",
        "docker compose config --services",  # what the compose file defines now
        "docker compose start web",
    ], calls


def test_a_restore_whose_stop_fails_restores_nothing_and_starts_again(tmp_path, standins, app):
    """The application could not be stopped (``docker compose stop`` fails; the engine
    is a recording stand-in): nothing is restored under it, what may have stopped is
    started again, exit 1 with the reason once (a plugin's error there ended the restore
    with a traceback, exit 70)."""
    standins.set(running=["web"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("backed up")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "shop",
        f"service: {{name: shop}}\ndocker: {{compose_file: {app}}}\nfiles: {{paths: [{data}]}}\n",
    )
    assert box.cli("run", env=standins.env).returncode == 0
    (archive,) = box.published()
    (data / "a.txt").write_text("edited")
    standins.set(running=["web"], fail_stop=True)
    result = box.cli("restore", "--service", "shop", "--from", str(archive), env=standins.env)
    said = result.stderr
    assert result.returncode == 1, said
    assert "Traceback" not in said and said.count("could not stop the application") == 1, said
    assert "nothing restored" in said and "restore of shop incomplete: docker failed" in said
    assert (data / "a.txt").read_text() == "edited", "nothing restored under a live app"
    calls = [short(c) for c in standins.calls()]
    assert calls[-3:] == [
        "docker compose stop web",
        "docker compose config --services",  # what the compose file defines now
        "docker compose start web",
    ], calls


BRITTLE = """\
from pullback.plugins import TaskType, hookimpl


@hookimpl
def pullback_task_types():
    return [TaskType("brittle", {"type": "object"})]


@hookimpl
def pullback_dump(task):
    (task.staging / "state").write_text("x")


@hookimpl
def pullback_restore(task, source, target, dry_run, plan):
    raise KeyError("a bug in a third-party plugin")
"""


def test_a_plugin_s_bug_in_restore_fails_its_task_not_the_restore(tmp_path):
    """A plugin is anyone's code: a restore hook raising anything (here a KeyError)
    fails that task, said once, and the service's other tasks are restored (the restore
    ended with "internal error" and a traceback, exit 70, the later tasks not tried)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "brittle.py").write_text(BRITTLE)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("backed up")
    box = ClientSandbox(tmp_path / "client")
    box.write_config(plugin_dirs=[str(plugins)])
    box.add_service("shop", f"service: {{name: shop}}\nbrittle: {{}}\nfiles: {{paths: [{data}]}}\n")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    (data / "a.txt").write_text("edited")
    result = box.cli("restore", "--service", "shop", "--from", str(archive))
    said = result.stderr
    assert result.returncode == 1, said
    assert "Traceback" not in said and "internal error" not in said, said
    assert said.count("a bug in a third-party plugin") == 1, said
    assert "[shop/brittle] restore failed: KeyError: 'a bug in a third-party plugin'" in said
    assert "restore of shop incomplete: brittle failed (above)" in said, said
    assert (data / "a.txt").read_text() == "backed up", "the files task still ran"


def test_mongodb_password_goes_by_file_never_argv(tmp_path, standins):
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    pw = box.root / "mongo.pass"
    pw.write_text("m0ngo-secret\n")
    pw.chmod(0o600)
    box.add_service(
        "m",
        f"""\
        service: {{name: m}}
        mongodb: {{host: db1, port: 27017, username: backup, password_file: {pw}}}
        """,
    )
    result = box.cli("run", env=standins.env)
    assert result.returncode == 0, result.stderr
    (call,) = standins.calls()
    assert "m0ngo-secret" not in " ".join(call["args"])
    assert call["config"] == 'password: "m0ngo-secret"\n'
    assert "--host=db1" in call["args"] and "--gzip" in call["args"]
    assert "m0ngo-secret" not in result.stderr


def test_influx_token_goes_by_environment(tmp_path, standins):
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    token = box.root / "token"
    token.write_text("influx-token-xyz\n")
    token.chmod(0o600)
    box.add_service("i", f"service: {{name: i}}\ninfluxdb: {{token_file: {token}, bucket: b}}\n")
    result = box.cli("run", env=standins.env)
    assert result.returncode == 0, result.stderr
    (call,) = standins.calls()
    assert call["token_in_env"] == "influx-token-xyz"
    assert "influx-token-xyz" not in " ".join(call["args"])


def test_backup_suite_s_token_in_the_file_goes_by_environment_and_stays_masked(tmp_path, standins):
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    box.add_service("i", "service: {name: i}\ninfluxdb: {token: infl-tok-123456, org: home}\n")
    result = box.cli("run", "-v", env=standins.env)
    assert result.returncode == 0, result.stderr
    (call,) = standins.calls()
    assert call["token_in_env"] == "infl-tok-123456"
    assert "infl-tok-123456" not in " ".join(call["args"]) + result.stderr
    (archive,) = box.published()
    assert b"infl-tok-123456" not in archive.with_name(archive.name + ".json").read_bytes()


def test_a_missing_tool_skips_that_task_with_a_clear_message(tmp_path):
    box = ClientSandbox(tmp_path / "client")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    box.add_service(
        "m",
        f"""\
        service: {{name: m}}
        mongodb: {{host: db1}}
        files: {{paths: [{tmp_path / "d"}]}}
        """,
    )
    env = {"PATH": "/usr/bin:/bin"}  # no mongodump anywhere
    result = box.cli("run", env=env)
    assert result.returncode == 1
    (archive,) = box.published()
    (service,) = box.sidecar(archive)["services"]
    tasks = {t["type"]: t for t in service["tasks"]}
    assert tasks["mongodb"]["status"] == "skipped"
    assert tasks["mongodb"]["error"].startswith("skipped: mongodump is not installed")
    assert tasks["files"]["status"] == "ok"
    check = box.cli("check", env=env)
    assert "mongodb: mongodump is not installed (MongoDB Database Tools" in check.stdout


def test_restore_files_to_a_target_keeps_metadata(tmp_path, is_root):
    data = make_rich_tree(tmp_path / "data", as_root=is_root)
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    target = tmp_path / "target"
    dry = box.cli(
        "restore", "--service", "app", "--from", str(archive), "--target", str(target), "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert "would: restore " in dry.stdout and not target.exists()
    result = box.cli("restore", "--service", "app", "--from", str(archive), "--target", str(target))
    assert result.returncode == 0, result.stderr
    assert snapshot(target / str(data).lstrip("/")) == snapshot(data)


def test_restore_in_place_and_from_a_directory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.ini").write_text("good\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    assert box.cli("run").returncode == 0
    (data / "config.ini").write_text("broken by a bad deploy\n")
    (archive,) = box.published()
    from pullback.client.restore import unpack_archive

    unpacked = unpack_archive(archive, tmp_path / "snapshot")
    result = box.cli("restore", "--service", "app", "--from", str(unpacked), "--task", "files")
    assert result.returncode == 0, result.stderr
    assert (data / "config.ini").read_text() == "good\n"


def test_restore_usage_errors(tmp_path):
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{tmp_path}]}}\n")
    result = box.cli("restore", "--service", "nope", "--from", str(tmp_path))
    assert result.returncode == 2 and "no service named 'nope'" in result.stderr
    result = box.cli("restore", "--service", "app", "--from", str(tmp_path), "--task", "db")
    assert result.returncode == 2
    result = box.cli("restore", "--service", "app", "--from", str(tmp_path / "missing"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_restore_from_a_snapshot_without_the_service_exits_2(tmp_path):
    """A restored snapshot of other services is a wrong source (exit 2, named), never
    "nothing to restore" and success (found by an outside tester, with a database
    task, which exited 0, and a files task, which exited 1)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.add_service("shop", f"service: {{name: shop}}\nfiles: {{paths: [{data}]}}\n")
    assert box.cli("run").returncode == 0
    (archive,) = box.published()
    from pullback.client.restore import unpack_archive

    unpacked = unpack_archive(archive, tmp_path / "snapshot")
    shutil.rmtree(unpacked / "services" / "shop")
    for source in (unpacked, unpacked / "services"):
        result = box.cli("restore", "--service", "shop", "--from", str(source))
        assert result.returncode == 2, result.stderr
        assert "holds no services/shop/" in result.stderr
    app = box.cli("restore", "--service", "app", "--from", str(unpacked / "services" / "app"))
    assert app.returncode == 0, app.stderr
    box.add_service("late", f"service: {{name: late}}\nfiles: {{paths: [{data}]}}\n")
    result = box.cli("restore", "--service", "late", "--from", str(archive))
    assert result.returncode == 2, result.stderr  # (an archive from before the service)
    assert f"{archive} holds no services/late/ (an archive from before the service" in (
        result.stderr
    )
    assert "name a later archive" in result.stderr  # (helper-150 F4)
    assert "restore the snapshot first" not in result.stderr


def test_restore_from_a_restored_backup_suite_snapshot_says_what_it_is(tmp_path):
    """An adopted backup-suite snapshot restored to a directory (its layout:
    ``<type>/<service name>/{data,databases,...}``): the restore said "restore the
    snapshot first", which had been done (an outside migration walk)."""
    box = ClientSandbox(tmp_path / "client")
    box.add_service("shared", f"service: {{name: shared}}\nfiles: {{paths: [{tmp_path}]}}\n")
    restored = tmp_path / "r1"
    (restored / "files" / "shared" / "data").mkdir(parents=True)
    (restored / "files" / "shared" / "config_used").mkdir()
    for source in (restored, restored / "files" / "shared"):
        result = box.cli("restore", "--service", "shared", "--from", str(source), "--dry-run")
        assert result.returncode == 2, result.stderr
        assert "holds a snapshot backup-suite made" in result.stderr, result.stderr
        assert "Snapshots made by backup-suite" in result.stderr
        assert "restore the snapshot first" not in result.stderr


def test_restore_of_a_service_that_failed_that_day_says_so_exit_1(tmp_path):
    """A service whose every task failed has nothing in the archive: the restore says
    it failed that day, why, and where to restore from instead, exit 1, naming the
    archive given (an outside test got exit 2, "restore the snapshot first", and a
    scratch directory already gone)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.add_service(
        "shop",
        'service: {name: shop}\ncommand: {dump: [{run: ["sh", "-c", "exit 3"], '
        "output: shop.sql}]}\n",
    )
    assert box.cli("run").returncode == 1  # a partial archive: app is in it
    (archive,) = box.published()
    result = box.cli("restore", "--service", "shop", "--from", str(archive), "--dry-run")
    assert result.returncode == 1, result.stderr
    said = result.stderr
    assert f"shop: nothing to restore: this service failed in {archive}" in said, said
    assert "(command: dump failed: " in said, said  # each failed task, and why
    assert "pullback-server restore HOST --service shop" in said
    assert "pullback-restore-" not in said  # no scratch directory named
    # from a restored snapshot, its root or its services directory (the server's
    # restore brings SIDECAR.json to the root)
    from pullback.client.restore import unpack_archive

    snap = unpack_archive(archive, tmp_path / "snap")
    (snap / "SIDECAR.json").write_bytes(archive.with_name(archive.name + ".json").read_bytes())
    for source in (snap, snap / "services"):
        result = box.cli("restore", "--service", "shop", "--from", str(source), "--dry-run")
        assert result.returncode == 1, (source, result.stderr)
        assert "shop: nothing to restore: this service failed in" in result.stderr
    app = box.cli("restore", "--service", "app", "--from", str(archive), "--dry-run")
    assert app.returncode == 0, app.stderr


def _restore_calls(standins, box: ClientSandbox, *args: str) -> tuple:
    (archive,) = box.published()
    before = len(standins.calls())
    result = box.cli("restore", "--service", "d", "--from", str(archive), *args, env=standins.env)
    return result, [short(c) for c in standins.calls()[before:]]


def test_mongodb_restores_beside_or_copies_aside_before_replacing(tmp_path, standins):
    """The stand-in records mongorestore's arguments (no MongoDB server in Debian 12)."""
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    box.add_service("d", "service: {name: d}\nmongodb: {host: db1, database: shop}\n")
    assert box.cli("run", env=standins.env).returncode == 0
    result, calls = _restore_calls(standins, box)
    assert result.returncode == 0, result.stderr
    stamp = r"\d{8}T\d{6}Z"  # the time of the restore
    assert calls[0].endswith("--gzip --dryRun")
    assert re.search(
        rf"--nsFrom=\$db\$\.\$coll\$ --nsTo=\$db\$_restored_{stamp}\.\$coll\$$", calls[1]
    )
    assert "--drop" not in " ".join(calls)
    result, calls = _restore_calls(standins, box, "--replace")
    assert result.returncode == 0, result.stderr
    assert calls[1].startswith("mongodump --host=db1") and "--db=shop" in calls[1]
    assert calls[2].endswith("--gzip --drop")  # only after the live data was copied aside
    assert re.search(rf"mongodb-before-restore-{stamp}\.archive\.gz", result.stdout)


def test_a_mongodb_dry_run_gives_the_preflight_s_verdict(tmp_path, standins):
    """A dry run ran nothing, so it said "would: preflight" and no verdict; the dry run
    of mongorestore changes nothing, and runs in a dry run now."""
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    box.add_service("d", "service: {name: d}\nmongodb: {host: db1, database: shop}\n")
    assert box.cli("run", env=standins.env).returncode == 0
    result, calls = _restore_calls(standins, box, "--replace", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [c.rsplit(" ", 1)[-1] for c in calls] == ["--dryRun"]
    assert "would: preflight: ok (mongorestore --dryRun)" in result.stdout
    standins.set(mongo_fail=True)  # the server is unreachable: said, nothing run after it
    for args in (("--replace", "--dry-run"), ("--replace",)):
        result, calls = _restore_calls(standins, box, *args)
        assert result.returncode == 1
        assert (
            "preflight failed (mongorestore --dryRun), nothing was changed: cannot reach the "
            "server" in result.stderr
        )
        assert [c.rsplit(" ", 1)[-1] for c in calls] == ["--dryRun"]


def test_influx_restores_into_a_new_bucket_and_never_replaces_everything_silently(
    tmp_path, standins
):
    standins.set()
    box = ClientSandbox(tmp_path / "client")
    box.add_service("d", "service: {name: d}\ninfluxdb: {bucket: metrics}\n")
    assert box.cli("run", env=standins.env).returncode == 0
    result, calls = _restore_calls(standins, box)
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert re.fullmatch(
        r"influx restore --bucket metrics --new-bucket metrics_restored_\d{8}T\d{6}Z", call
    )

    box.add_service("d", "service: {name: d}\ninfluxdb: {}\n")  # a backup of every bucket
    assert box.cli("run", env=standins.env).returncode == 0
    newest = box.published()[-1]
    result = box.cli("restore", "--service", "d", "--from", str(newest), env=standins.env)
    assert result.returncode == 1
    assert "restoring it replaces them; add --replace" in result.stderr
    before = len(standins.calls())
    replaced = box.cli(
        "restore", "--service", "d", "--from", str(newest), "--replace", env=standins.env
    )
    assert replaced.returncode == 0, replaced.stderr
    calls = [short(c) for c in standins.calls()[before:]]
    assert calls == ["influx backup", "influx restore --full"]  # copied aside, then replaced


def test_a_systemd_task_is_restored_by_stopping_and_starting_and_says_nothing_else(
    tmp_path, standins
):
    """An outside walk: every restore of a service with a systemd task warned
    "systemd: nothing to restore (.../systemd is not in the snapshot)"; such a task
    holds no data."""
    standins.set(active=["app.service"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("a")
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "app",
        f"service: {{name: app}}\nsystemd: {{units: [app.service]}}\nfiles: {{paths: [{data}]}}\n",
    )
    assert box.cli("run", env=standins.env).returncode == 0
    (archive,) = box.published()
    (data / "a.txt").write_text("edited")
    result = box.cli("restore", "--service", "app", "--from", str(archive), env=standins.env)
    assert result.returncode == 0, result.stderr
    assert "nothing to restore" not in result.stderr and " WARNING " not in result.stderr
    assert (data / "a.txt").read_text() == "a"
    calls = [short(c) for c in standins.calls()]
    assert calls[-2:] == ["systemctl stop app.service", "systemctl start app.service"]
    only = box.cli(
        "restore", "--service", "app", "--from", str(archive), "--task", "systemd", env=standins.env
    )
    assert only.returncode == 0 and "nothing to restore" not in only.stderr, only.stderr
    assert "stopped and started app; nothing restored: task systemd holds no data" in only.stderr
    assert "restored app" not in only.stderr, only.stderr
    assert [short(c) for c in standins.calls()][-2:] == calls[-2:], "a restart"
