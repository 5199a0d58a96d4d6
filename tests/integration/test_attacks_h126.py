"""Outside review (helper h126) of the client's ``docker`` (compose) and ``files`` plugins as
an administrator meets them: docs/client.md, docs/plugins.md, docs/restore.md,
docs/configuration.md (service files), plugins/docker.py, plugins/files.py,
plugins/exclude.py.

What was done: service files written as the docs say (a compose application stopped
around the snapshot, its ``.env``, plain files with excludes), ``pullback-client run``,
``check``, ``restore`` (in place, ``--dry-run``, ``--target``, ``--task``), and attacks:
compose output with escapes, stops/starts that fail or hang, Compose v2's handling of
``profiles``, an application directory whose owner plants symlinks or sparse files, exclude
patterns against real rsync as the oracle, sockets/FIFOs/devices/odd names.

No Docker engine here: ``docker`` is the project's recording STAND-IN
(tests/standins/standin.py), sometimes behind a small shell wrapper written below that
changes one answer (said in each test). Everything else is real: the CLI, rsync, cp.

The thirteen defects it found are mended (a bad .env is now refused loudly, the task
failing, rather than archived); their tests assert what the docs say.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.client import ClientSandbox

SRC = Path(__file__).resolve().parent / "src"
if not (SRC / "tests" / "standins" / "standin.py").exists():  # (copied into the tree)
    SRC = Path(__file__).resolve().parents[2]
STANDIN = SRC / "tests" / "standins" / "standin.py"
"""The project's recording stand-in for ``docker`` (no Docker engine on this machine)."""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is the oracle")


# -- helpers ---------------------------------------------------------------------------------


class Docker:
    """The ``docker`` stand-in on PATH (optionally behind a wrapper script), its calls."""

    def __init__(self, base: Path, wrapper: str | None = None):
        self.bin = base / "bin"
        self.bin.mkdir()
        (self.bin / "docker").symlink_to(STANDIN)
        self.log = base / "calls.jsonl"
        self.state = base / "state.json"
        path = f"{self.bin}:{os.environ['PATH']}"
        if wrapper is not None:
            wrap = base / "wrap"
            wrap.mkdir()
            (wrap / "docker").write_text(wrapper)
            (wrap / "docker").chmod(0o755)
            path = f"{wrap}:{path}"
        self.env = {
            "PATH": path,
            "STANDIN_LOG": str(self.log),
            "STANDIN_STATE": str(self.state),
            "STANDIN_DIR": str(self.bin),
        }

    def set(self, **values) -> None:
        self.state.write_text(json.dumps(values))

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line)["args"] for line in self.log.read_text().splitlines()]

    def verbs(self) -> list[list[str]]:
        """Each compose call from its verb on (``['stop', 'web', 'db']``)."""
        out = []
        for args in self.calls():
            if args[:1] == ["compose"]:
                i = next(i for i, a in enumerate(args) if a in ("ps", "stop", "start", "config"))
                out.append(args[i:])
        return out


def app_dir(base: Path, compose_text: str) -> Path:
    app = base / "app"
    app.mkdir()
    compose = app / "docker-compose.yml"
    compose.write_text(compose_text)
    return compose


def docker_box(base: Path, compose: Path, extra: str = "") -> ClientSandbox:
    box = ClientSandbox(base / "client")
    box.add_service(
        "shop", f"service:\n  name: shop\ndocker:\n  docker_compose_path: {compose}\n{extra}"
    )
    return box


def untar(archive: Path, *args: str) -> str:
    """``tar ARGS`` of the zstd ``archive`` (no shell)."""
    with subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE) as unzstd:
        out = subprocess.run(
            ["tar", *args, "-f", "-"], stdin=unzstd.stdout, capture_output=True, text=True
        ).stdout
        unzstd.stdout.close()
    return out


def restore(box: ClientSandbox, archive: Path, *args: str, env: dict):
    return box.cli("restore", "--service", "shop", "--from", str(archive), *args, env=env)


# -- docker: Compose v2 profiles ------------------------------------------------------------

PROFILE_WRAPPER = """\
#!/bin/sh
# STAND-IN wrapper: `docker compose ... config --services` answers as Docker Compose v2
# does without --profile / COMPOSE_PROFILES: only the services that have no `profiles:`
# (docker/cli#3313, docker-archive/compose-cli#1964), while `compose ps` lists every
# running container of the project, profiles or not (docker/compose#12361). Every other
# call goes to the recording stand-in unchanged.
# With `--profile '*'` every profile is enabled and every service listed, as compose does.
every=no
for a in "$@"; do [ "$prev" = "--profile" ] && [ "$a" = "*" ] && every=yes; prev="$a"; done
case " $* " in
*" config --services "*)
    [ "$every" = yes ] && exec "$STANDIN_DIR/docker" "$@"
    "$STANDIN_DIR/docker" "$@" >/dev/null || exit $?
    for a in "$@"; do [ "$prev" = "-f" ] && f="$a"; prev="$a"; done
    exec python3 -c 'import sys, yaml
for n, s in (yaml.safe_load(open(sys.argv[1])).get("services") or {}).items():
    "profiles" in (s or {}) or print(n)' "$f";;
esac
exec "$STANDIN_DIR/docker" "$@"
"""


def test_a_run_starts_again_a_running_service_that_has_a_compose_profile(tmp_path):
    compose = app_dir(
        tmp_path,
        "services:\n  web: {image: nginx}\n  db: {image: postgres}\n"
        "  worker: {image: busybox, profiles: [jobs]}\n",
    )
    docker = Docker(tmp_path, PROFILE_WRAPPER)
    # started by the administrator with `docker compose --profile jobs up -d`
    docker.set(running=["web", "db", "worker"])
    box = docker_box(tmp_path, compose)

    result = box.cli("run", env=docker.env)

    stops = [v for v in docker.verbs() if v[0] == "stop"]
    starts = [v for v in docker.verbs() if v[0] == "start"]
    assert stops and "worker" in stops[0], docker.verbs()  # (the run did stop it)
    record = list(box.root.rglob("stopped.json"))
    assert any("worker" in v for v in starts), (
        f"exit {result.returncode}; worker was stopped and never started again; "
        f"calls {docker.verbs()}; record left for start-stopped: {record}; "
        f"log:\n{result.stderr}"
    )


# -- docker: the dump follows what the application directory's owner plants -----------------


@needs_root
def test_docker_dump_never_reads_a_root_file_through_a_planted_env_symlink(tmp_path):
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o755)
    compose = app_dir(base, "services:\n  web: {image: nginx}\n")
    secret = base / "root-only"
    secret.write_text("root:$6$SECRET-HASH:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    app = compose.parent
    os.chown(app, 65534, 65534)  # the application's directory belongs to its user (nobody)
    os.symlink(secret, app / ".env")
    os.lchown(app / ".env", 65534, 65534)  # planted by that user
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    box = docker_box(base, compose)

    result = box.cli("run", env=docker.env)

    # (mended: the task fails and says why; the archive, if any, never holds root's file)
    assert result.returncode == 1 and "a symlink another user could have made" in result.stderr
    for archive in box.published():
        dumped = untar(archive, "-xO", "services/shop/docker/.env")
        assert "SECRET-HASH" not in dumped, f"the archive's .env holds root's file: {dumped!r}"


def test_docker_dump_does_not_write_out_a_sparse_env_file_in_full(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx}\n")
    env_file = compose.parent / ".env"
    with open(env_file, "wb") as handle:  # 0 bytes on disk, 256 MiB apparent
        handle.truncate(256 << 20)
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    box = docker_box(tmp_path, compose)

    most = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            for path in box.work.rglob(".env") if box.work.exists() else ():
                with contextlib.suppress(OSError):
                    most[0] = max(most[0], path.lstat().st_blocks * 512)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = box.cli("run", env=docker.env)
    finally:
        done.set()
        watcher.join()
    # (mended: refused by its size, 16 MiB at most, the task failed and said so)
    assert result.returncode == 1 and "larger than 16 MiB" in result.stderr, result.stderr
    assert most[0] < (1 << 20), (
        f"the staged copy of a sparse .env took {most[0] >> 20} MiB of disk in work_dir"
    )


# -- docker: restores ------------------------------------------------------------------------


def test_docker_restore_says_when_the_snapshot_s_compose_file_is_not_restored(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx:1}\n")
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    box = docker_box(tmp_path, compose)
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    # since then the application moved to the newer name, compose.yaml
    renamed = compose.with_name("compose.yaml")
    compose.rename(renamed)
    renamed.write_text("services:\n  web: {image: nginx:2}\n")
    box.add_service("shop", f"service:\n  name: shop\ndocker:\n  docker_compose_path: {renamed}\n")

    result = restore(box, archive, env=docker.env)

    said = result.stdout + result.stderr
    assert result.returncode != 0 or "docker-compose.yml" in said, (
        f"exit {result.returncode}, nothing says the snapshot's docker-compose.yml was "
        f"left out; the live compose.yaml is still {renamed.read_text()!r}:\n{said}"
    )


def test_a_restore_below_target_does_not_stop_the_live_application(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx}\n  db: {image: postgres}\n")
    data = tmp_path / "media"
    data.mkdir()
    (data / "a.jpg").write_text("A")
    docker = Docker(tmp_path)
    docker.set(running=["web", "db"])
    box = docker_box(tmp_path, compose, extra=f"files:\n  paths: [{data}]\n")
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    before = len(docker.verbs())

    result = restore(box, archive, "--target", str(tmp_path / "check"), env=docker.env)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "check" / str(data).lstrip("/") / "a.jpg").exists()
    stops = [v for v in docker.verbs()[before:] if v[0] == "stop"]
    assert not stops, f"the live application was stopped for a restore below --target: {stops}"


def test_a_dry_run_names_a_pinned_compose_file_that_exists(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx:1}\n")
    docker = Docker(tmp_path)
    docker.set(running=["web"], images={"web": "nginx:1"})
    box = docker_box(tmp_path, compose, extra="  pin_images: true\n")
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()

    dry = restore(box, archive, "--dry-run", env=docker.env)

    assert dry.returncode == 0, dry.stderr
    named = dry.stdout.split("the images in use at backup time are in ", 1)[1].split()[0]
    assert os.path.exists(named) or "before-restore" in named, (
        f"the dry run names {named}, which does not exist:\n{dry.stdout}"
    )


# -- docker: service-file checks --------------------------------------------------------------


def test_check_refuses_a_docker_timeout_of_zero(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx}\n")
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    box = docker_box(tmp_path, compose, extra="  timeout: 0\n")

    check = box.cli("check", env=docker.env)
    run = box.cli("run", env=docker.env)

    # (mended: the run skips the service and says why, as check does)
    assert "docker.timeout: expected a duration more than 0, like 90s, 15m or 6h, got 0" in (
        run.stderr
    ), run.stderr
    assert check.returncode == 2 and "docker.timeout" in check.stdout + check.stderr, (
        f"check exit {check.returncode}: {check.stdout}{check.stderr}"
    )


# -- files: exclude patterns against real rsync ------------------------------------------------

ORACLE_TREE = [
    "app/a/c.txt",
    "app/a/b/c.txt",
    "app/deep/a/b/x.txt",
    "app/deep/a/b/y/x.txt",
    "app/q1",
    "app/sp ace/f",
    "app/1.txt",
    "app/x.txt",
]


def _rsync_kept(root: Path, pattern: str, dest: Path) -> set[str]:
    """What backup-suite's line `cd dirname && rsync -a --delete-excluded --exclude P
    basename DEST/` copies of the listed ``root/app``."""
    dest.mkdir()
    subprocess.run(
        ["rsync", "-a", "--delete-excluded", "--exclude", pattern, "app", f"{dest}/"],
        cwd=root,
        check=True,
    )
    return {str(Path(d, n).relative_to(dest)) for d, _, names in os.walk(dest) for n in names}


def _archived(tmp_path: Path, root: Path, pattern: str) -> set[str]:
    """What a real client run's files task archives of ``root/app`` with ``pattern``."""
    box = ClientSandbox(tmp_path / "client")
    box.add_service(
        "media",
        f"service:\n  name: media\nfiles:\n  paths: [{root / 'app'}]\n"
        f"  exclude: [{json.dumps(pattern)}]\n",
    )
    result = box.cli("run")
    assert result.returncode == 0, result.stderr
    (archive,) = box.published()
    listing = untar(archive, "-tv").splitlines()
    names = [line.split(None, 5)[5] for line in listing if line.startswith("-")]  # files
    prefix = f"services/media/files/{str(root).lstrip('/')}/"
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


@needs_rsync
@pytest.mark.parametrize(
    "pattern, why",
    [
        ("a/**/c.txt", "'/**/' in the middle matches no directory at all: a/c.txt lost"),
        ("**/b/**/x.txt", "'/**/' in the middle matches no directory: deep/a/b/x.txt lost"),
        ("q\\1", "rsync takes '\\' literally in a pattern without wildcards: q1 lost"),
        ("sp\\ ace", "rsync takes '\\' literally without wildcards: 'sp ace/' lost"),
        ("[[:digit:]].txt", "POSIX classes ([[:digit:]]) are not understood: 1.txt kept"),
    ],
    ids=[
        "middle-doublestar",
        "middle-doublestar-2",
        "backslash-q1",
        "backslash-space",
        "posix-class",
    ],
)
def test_files_excludes_keep_exactly_what_backup_suite_s_rsync_kept(tmp_path, pattern, why):
    root = tmp_path / "tree"
    for rel in ORACLE_TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    expected = _rsync_kept(root, pattern, tmp_path / "rsync")
    got = _archived(tmp_path, root, pattern)
    assert got == expected, (
        f"{why}; rsync kept and pullback did not: {sorted(expected - got)}; "
        f"pullback kept and rsync did not: {sorted(got - expected)}"
    )


@needs_rsync
@pytest.mark.parametrize("pattern", ["*.txt", "a/b/", "/app/deep", "deep/**"])
def test_files_excludes_the_oracle_harness_agrees_on_plain_patterns(tmp_path, pattern):
    """(a control for the test above: the same harness, patterns that do agree)"""
    root = tmp_path / "tree"
    for rel in ORACLE_TREE:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    assert _archived(tmp_path, root, pattern) == _rsync_kept(root, pattern, tmp_path / "rsync")


# -- files: paths the schema accepts and the restore cannot take back ---------------------------


def test_a_files_path_with_dotdot_is_refused_by_check_or_restores(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("as backed up\n")
    box = ClientSandbox(tmp_path / "client")
    box.add_service("f", f'service:\n  name: f\nfiles:\n  paths: ["{data}/../other"]\n')

    check = box.cli("check")
    if check.returncode == 2:
        assert "files.paths" in check.stdout + check.stderr  # refused with its key: fixed
        return
    run = box.cli("run")
    assert run.returncode == 0, run.stderr
    (archive,) = box.published()
    (other / "o.txt").write_text("damaged since\n")

    result = box.cli("restore", "--service", "f", "--from", str(archive))

    assert result.returncode == 0 and (other / "o.txt").read_text() == "as backed up\n", (
        f"check said ok, the run archived it, the restore exits {result.returncode}:\n"
        f"{result.stderr[-1500:]}"
    )


@needs_rsync
def test_anchored_excludes_apply_to_a_listed_root_as_rsync_applied_them(tmp_path):
    from pullback.plugins.exclude import ExcludeMatcher

    patterns = ["/proc", "/var/cache/", "/x/***"]
    # the oracle: rsync's transfer root for a source of "/" is "/" itself, as for "T/"
    tree = tmp_path / "T"
    for rel in ("proc/kcore", "var/cache/c", "var/keep", "x/y", "keep"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(rel)
    excludes = [a for p in patterns for a in ("--exclude", p)]
    subprocess.run(["rsync", "-a", *excludes, f"{tree}/", f"{tmp_path / 'D'}/"], check=True)
    copied = {
        str(Path(d, n).relative_to(tmp_path / "D"))
        for d, _, names in os.walk(tmp_path / "D")
        for n in names
    }
    assert copied == {"var/keep", "keep"}  # (rsync left out proc, var/cache and x)

    excluded = ExcludeMatcher(patterns).rooted("/")  # what archive_paths uses for "/"
    kept = {
        rel
        for rel, is_dir in [("proc", True), ("var/cache", True), ("x", True)]
        if not excluded(rel, is_dir)
    }
    assert not kept, f"a backup of / would walk into: {sorted(kept)}"


BROKEN_COMPOSE_WRAPPER = """\
#!/bin/sh
# STAND-IN wrapper: like real `docker compose`, every compose verb first parses the compose
# file and fails (exit 15) when it is not YAML; otherwise the recording stand-in.
if [ "$1" = compose ]; then
    for a in "$@"; do [ "$prev" = "-f" ] && f="$a"; prev="$a"; done
    if [ -f "$f" ] && ! python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' \\
            "$f" 2>/dev/null; then
        echo "yaml: line 3: mapping values are not allowed in this context" >&2
        exit 15
    fi
fi
exec "$STANDIN_DIR/docker" "$@"
"""


def test_a_broken_live_compose_file_can_be_restored_or_the_way_out_is_said(tmp_path):
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx:1}\n")
    docker = Docker(tmp_path, BROKEN_COMPOSE_WRAPPER)
    docker.set(running=["web"])
    box = docker_box(tmp_path, compose)
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    compose.write_text("services:\n  web: {image: nginx:1\n   db: : :\n")  # a bad edit

    result = restore(box, archive, "--task", "docker", env=docker.env)

    restored = compose.read_text() == "services:\n  web: {image: nginx:1}\n"
    said = result.stderr.lower()
    assert restored or any(w in said for w in ("move it", "aside", "--target", "by hand")), (
        f"exit {result.returncode}; the compose file is still broken and nothing says what "
        f"to do:\n{result.stderr}"
    )


# -- docker: a compose file its application user controls --------------------------------------

PROJECT_WRAPPER = """\
#!/usr/bin/env python3
# STAND-IN wrapper: adds compose's projects and profiles to the recording stand-in (which it
# still calls, for the record), as Docker Compose v2 has them: the project is the compose
# file's top-level `name:` (else its directory's name); `ps` lists the project's running
# services, declared or not, profiles or not (docker/compose#11220); `config --services`
# omits services whose profile is not active (docker/cli#3313); `stop`/`start` take
# services the file declares (a profile service named explicitly included) and refuse
# others ("no such service", compose >= 2.3.2). Running services: $PROJECTS (JSON).
import json, os, subprocess, sys, yaml
args = sys.argv[1:]
subprocess.run([os.path.join(os.environ["STANDIN_DIR"], "docker"), *args],
               stdout=subprocess.DEVNULL)
if args[:1] != ["compose"]:
    sys.exit(0)
f = args[args.index("-f") + 1]
doc = yaml.safe_load(open(f)) or {}
declared = doc.get("services") or {}
project = doc.get("name") or os.path.basename(os.path.dirname(f))
path = os.environ["PROJECTS"]
state = json.load(open(path))
running = state.setdefault(project, [])
verb = next(a for a in args[1:] if a in ("ps", "stop", "start", "config"))
names = [a for a in args[args.index(verb) + 1:] if not a.startswith("-")]
if verb == "ps":
    print("\\n".join(running))
elif verb == "config":  # (every profile with --profile '*')
    every = "--profile" in args and args[args.index("--profile") + 1] == "*"
    print("\\n".join(n for n, s in declared.items() if every or "profiles" not in (s or {})))
else:
    unknown = [n for n in names if n not in declared]
    if unknown:
        sys.exit(f"no such service: {unknown[0]}")
    if verb == "stop":
        state[project] = [n for n in running if n not in names]
    else:
        state[project] = running + [n for n in names if n not in running]
json.dump(state, open(path, "w"))
"""


def test_a_compose_file_s_owner_cannot_make_the_run_stop_another_application(tmp_path):
    # the notes application's own compose file, written by its (unprivileged) user
    compose = app_dir(
        tmp_path,
        "name: billing\nservices:\n  web: {image: busybox, profiles: [x]}\n"
        "  db: {image: busybox, profiles: [x]}\n",
    )
    docker = Docker(tmp_path, PROJECT_WRAPPER)
    projects = tmp_path / "projects.json"
    projects.write_text(json.dumps({"billing": ["web", "db"]}))  # another team's application
    docker.env["PROJECTS"] = str(projects)
    box = docker_box(tmp_path, compose)  # the notes service file, as documented

    result = box.cli("run", env=docker.env)

    after = json.loads(projects.read_text())
    assert sorted(after.get("billing", [])) == ["db", "web"], (
        f"exit {result.returncode}; billing's services running after the notes backup: "
        f"{after.get('billing')}; calls {docker.verbs()}\n{result.stderr}"
    )


def test_a_bad_exclude_pattern_is_named_by_its_line_and_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    box = ClientSandbox(tmp_path / "client")
    path = box.add_service(
        "f",
        f"service:\n  name: f\nfiles:\n  paths: [{data}]\n  exclude:\n"
        "    - '*.log'\n    - '/'\n",  # ([z-a] is rsync's too now: '/' alone is refused)
    )
    check = box.cli("check")
    said = check.stdout + check.stderr
    assert check.returncode == 2, said
    assert f"{path}:7:" in said and "files.exclude[1]" in said, said


def test_a_restore_below_target_still_stops_for_a_command_task_s_restore(tmp_path):
    """helper-127: a ``command`` task's restore commands may write into the live system
    whatever --target says: with one the application is stopped as before."""
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx}\n")
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    extra = "command:\n  dump: ['echo d > $PULLBACK_STAGING/d.txt']\n  restore: ['true']\n"
    box = docker_box(tmp_path, compose, extra=extra)
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    before = len(docker.verbs())

    result = restore(box, archive, "--target", str(tmp_path / "check"), env=docker.env)

    assert result.returncode == 0, result.stderr
    verbs = [v[0] for v in docker.verbs()[before:]]
    assert "stop" in verbs and "start" in verbs, verbs


def test_a_renamed_compose_file_comes_back_below_target_under_its_own_name(tmp_path):
    """helper-127: the way out the refusal names (restore below --target) must work."""
    compose = app_dir(tmp_path, "services:\n  web: {image: nginx:1}\n")
    docker = Docker(tmp_path)
    docker.set(running=["web"])
    box = docker_box(tmp_path, compose)
    assert box.cli("run", env=docker.env).returncode == 0
    (archive,) = box.published()
    renamed = compose.with_name("compose.yaml")
    compose.rename(renamed)
    box.add_service("shop", f"service:\n  name: shop\ndocker:\n  docker_compose_path: {renamed}\n")
    check = tmp_path / "check"

    result = restore(box, archive, "--target", str(check), env=docker.env)

    assert result.returncode == 0, result.stderr
    back = check / str(compose).lstrip("/")
    assert back.read_text() == "services:\n  web: {image: nginx:1}\n"
