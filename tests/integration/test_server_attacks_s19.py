"""Attacks on the server-side changes of session 19 (helper-65): ``verify --snapshot`` and
``verify_failed_others``, strict JSON, repository groups' shared failures, and the
cut-short pull's gauges (``publish --if-failed``).

Real processes throughout: the server's CLI, real restic and borg repositories filled by
real pulls over sshd, a hostile serve endpoint as a real sshd's forced command. Tests
that showed a defect were xfail(strict=True) until mended; none is marked now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.faults import kill_tree
from tests.helpers.fleet import Fleet
from tests.integration.test_cut_short_outputs import (
    KILLED,
    cut_short,
    frozen,
    publish_after_stop,
    start_stuck_pull,
)
from tests.integration.test_monitoring import samples

pytestmark = [pytest.mark.integration]


# -- helpers --------------------------------------------------------------------------


def bare_config(root: Path, hosts: list[str], **extra) -> Path:
    """A server.yaml for ``hosts`` that no sshd answers (port 1: refused at once), for
    commands that read only the status file and the journal."""
    state, run = root / "state", root / "run"
    state.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    password = root / "repo.pass"
    password.write_text("x" * 20 + "\n")
    password.chmod(0o600)
    key = root / "id_ed25519"
    key.write_text("")
    key.chmod(0o600)
    data = {
        "state_dir": str(state),
        "lock_dir": str(run),
        "backend": {
            "type": "restic",
            "repository_root": str(root / "repos"),
            "password_file": str(password),
        },
        "ssh": {"key_file": str(key), "known_hosts": str(root / "known_hosts")},
        "hosts": [{"name": h, "address": "127.0.0.1", "port": 1} for h in hosts],
        **extra,
    }
    config = root / "server.yaml"
    config.write_text(yaml.safe_dump(data))
    return config


def server(config: Path, *args: str, env: dict | None = None, timeout: float = 120):
    argv = [sys.executable, "-m", "pullback.server.cli", "--config", str(config), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def failed_record(snapshot: str, summary: str = "restored files differ") -> dict:
    return {
        "id": snapshot,
        "time": "2026-11-01T06:00:00Z",
        "at": "2026-12-01T03:00:00Z",
        "summary": f"snapshot {snapshot} FAILED: {summary}",
    }


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_status(config: Path, hosts: dict) -> None:
    state = config.parent / "state"
    status = {"updated": now_iso(), "hosts": hosts}
    (state / "status.json").write_text(json.dumps(status))


def fresh_entry(**fields) -> dict:
    now = now_iso()
    return {
        "last_attempt": now,
        "last_success": now,
        "last_result": "stored",
        "newest_snapshot": now,
        "snapshots": 2,
        **fields,
    }


def _damage_one_pack(repository: Path, backend: str) -> Path:
    """As tests/integration/test_maintenance.py does it; returns the pack damaged."""
    if backend == "restic":
        packs = sorted((repository / "data").rglob("*"), key=lambda p: p.stat().st_size)
    else:
        packs = sorted((repository / "data").rglob("[0-9]*"), key=lambda p: p.stat().st_size)
    pack = [p for p in packs if p.is_file()][-1]
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 64):
        data[offset] ^= 0xFF
    pack.write_bytes(bytes(data))
    return pack


def host_status(fleet: Fleet, host: str = "web1") -> dict:
    return json.loads(fleet.server("status", "--json").stdout)["hosts"][host]


# -- 1. verify --snapshot, verify_failed_others ---------------------------------------


@pytest.fixture(params=["restic", "borg"])
def two_snapshots(request, tmp_path):
    """web1 pulled twice: snapshots A (older) and B (newer) that share most data."""
    fleet = Fleet(tmp_path, backend=request.param)
    host = fleet.add_host("web1")
    (host.data / "big.bin").write_bytes(os.urandom(1 << 20))
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    host.make_archive({"second.txt": b"the second day\n"})
    second = fleet.server("pull")
    assert second.returncode == 0, second.stderr
    listed = json.loads(fleet.server("snapshots", "web1", "--json").stdout)
    assert len(listed) == 2, listed
    yield fleet, [s["id"] for s in listed]
    fleet.stop()


def test_a_named_failure_stands_beside_the_first_until_each_is_proven(two_snapshots):
    """Damage, a default drill (the newest, B, fails), ``verify --snapshot A`` (fails:
    kept beside B, not over it), the damage repaired, then A proven by name and B by the
    default drill: each failure ends only by its own passing drill (held)."""
    fleet, (older, newer) = two_snapshots
    repo = fleet.repos / "web1"
    keep = repo.parent / "pristine"
    shutil.copytree(repo, keep)
    _damage_one_pack(repo, fleet.backend)

    first = fleet.server("verify")
    assert first.returncode == 1, first.stdout + first.stderr
    entry = host_status(fleet)
    assert entry["verify_failed_snapshot"]["id"] == newer
    named = fleet.server("verify", "--host", "web1", "--snapshot", older)
    assert named.returncode == 1, named.stdout + named.stderr
    entry = host_status(fleet)
    assert entry["verify_failed_snapshot"]["id"] == newer
    assert [o["id"] for o in entry["verify_failed_others"]] == [older]
    # the same failure twice is one record
    again = fleet.server("verify", "--host", "web1", "--snapshot", older)
    assert again.returncode == 1
    assert [o["id"] for o in host_status(fleet)["verify_failed_others"]] == [older]

    # the metric says 0 while either stands; --check is not OK
    check = fleet.server("status", "--check")
    assert check.returncode != 0, check.stdout

    # repaired (the pristine repository back): A by name, then the default drill goes to B
    shutil.rmtree(repo)
    shutil.copytree(keep, repo)
    proven = fleet.server("verify", "--host", "web1", "--snapshot", older)
    assert proven.returncode == 0, proven.stdout + proven.stderr
    entry = host_status(fleet)
    assert entry["verify_failed_snapshot"]["id"] == newer
    assert "verify_failed_others" not in entry
    last = fleet.server("verify")
    assert last.returncode == 0, last.stdout + last.stderr
    assert f"snapshot {newer}" in last.stdout  # the one that failed, not a random one
    entry = host_status(fleet)
    assert "verify_failed_snapshot" not in entry and "verify_failed_others" not in entry


def test_verify_snapshot_exit_codes_and_nothing_recorded(two_snapshots):
    """Exit 2, nothing recorded: an unknown id, an empty one, an id prefix both share,
    --snapshot with --random, --snapshot naming no host when several are configured
    (held)."""
    fleet, (older, _newer) = two_snapshots
    before = (fleet.state / "status.json").read_bytes()
    for args in (
        ("--host", "web1", "--snapshot", "f" * 64),
        ("--host", "web1", "--snapshot", ""),
        ("--host", "web1", "--snapshot", older, "--random"),
        ("--host", "web1", "--snapshot", "\x1b[2J" + "a" * 500),
    ):
        result = fleet.server("verify", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert "\x1b" not in result.stderr
    if fleet.backend == "borg":  # every archive is named web1-<stamp>: a shared prefix
        shared = fleet.server("verify", "--host", "web1", "--snapshot", "web1-")
        assert shared.returncode == 2, shared.stdout + shared.stderr
    assert (fleet.state / "status.json").read_bytes() == before
    hosts = [*yaml.safe_load(fleet.config.read_text())["hosts"]]
    fleet.write_config(hosts=[*hosts, {"name": "other", "address": "127.0.0.1", "port": 1}])
    several = fleet.server("verify", "--snapshot", older)
    assert several.returncode == 2, several.stdout + several.stderr
    assert "--snapshot names one host's snapshot" in several.stderr
    # the same host twice is one host
    twice = fleet.server("verify", "--host", "web1", "--host", "web1", "--snapshot", older)
    assert twice.returncode == 0, twice.stdout + twice.stderr
    # by its archive stamp, as restore --snapshot takes it
    listed = json.loads(fleet.server("snapshots", "web1", "--json").stdout)
    stamp = next(s["stamp"] for s in listed if s["id"] == older)
    by_stamp = fleet.server("verify", "--host", "web1", "--snapshot", stamp, "--json")
    assert by_stamp.returncode == 0, by_stamp.stdout + by_stamp.stderr
    assert older in by_stamp.stdout


def test_more_than_twenty_failed_named_drills_lose_none(tmp_path):
    """verify --snapshot of 23 snapshots after a damage (a repair being proven one by one):
    record_drills as verify calls it; the first 2 of the others are silently gone, and
    once the standing ones pass, the host is OK though those never passed."""
    from pullback.server import status_file
    from pullback.server.drill import DrillResult

    config = bare_config(tmp_path, ["web1"])
    state = config.parent / "state"

    def drill(snapshot: str, ok: bool) -> DrillResult:
        result = DrillResult("web1")
        result.snapshot_id, result.snapshot_time, result.ok = snapshot, now_iso(), ok
        if not ok:
            result.problems.append("restored files differ")
        return result

    failed = [f"{n:02d}" + "a" * 62 for n in range(23)]
    for snapshot in failed:
        status_file.record_drills(state, [drill(snapshot, False)])
    for snapshot in failed[3:]:  # every failure the status still names is proven
        status_file.record_drills(state, [drill(snapshot, True)])
    entry = json.loads(server(config, "status", "--json").stdout)["hosts"]["web1"]
    standing = [entry.get("verify_failed_snapshot", {}).get("id")] + [
        o["id"] for o in entry.get("verify_failed_others", [])
    ]
    assert failed[1] in standing and failed[2] in standing, standing


def test_the_row_names_every_standing_failure_after_a_failed_drill(tmp_path):
    """B's drill failed first and stands; ``verify --snapshot A`` failed last: the row
    says "the last restore drill failed: A ..." and nothing of B."""
    config = bare_config(tmp_path, ["web1"])
    entry = fresh_entry(
        verify_result="failed",
        verify_summary="snapshot aaaa FAILED: restored files differ",
        last_verified_attempt=now_iso(),
        verify_failed_snapshot=failed_record("bbbb"),
        verify_failed_others=[failed_record("aaaa")],
    )
    write_status(config, {"web1": entry})
    table = server(config, "status").stdout
    assert "the last restore drill failed" in table, table
    assert "another snapshot" in table or "bbbb" in table, table


def test_a_passing_drill_that_saw_the_failed_snapshots_forgotten_clears_them(tmp_path):
    from pullback.server import status_file
    from pullback.server.drill import DrillResult

    config = bare_config(tmp_path, ["web1"], metrics_file=str(tmp_path / "m.prom"))
    write_status(
        config,
        {
            "web1": fresh_entry(
                verify_result="failed",
                verify_failed_snapshot=failed_record("gone1"),
                verify_failed_others=[failed_record("gone2"), failed_record("gone3")],
            )
        },
    )
    # all three were forgotten by retention; the next drill (newest, intact) passes
    drill = DrillResult("web1")
    drill.snapshot_id, drill.snapshot_time, drill.ok = "newest", now_iso(), True
    drill.failed_before, drill.failed_before_gone = "gone1", True
    drill.listed = frozenset({"newest"})  # what the drill saw listed (it says so now)
    status_file.record_drills(config.parent / "state", [drill])
    published = server(config, "publish")
    assert published.returncode == 0, published.stderr
    found = samples(tmp_path / "m.prom")
    assert found[("pullback_last_verify_ok", (("host", "web1"),))] == 1


def test_merged_files_old_garbage_and_huge_verify_failed_others(tmp_path):
    """Another server's file: no field, garbage in it, 200 000 entries, NaN (refused by
    name), controls in the words: status --merge, --json and the page hold (held)."""
    config = bare_config(tmp_path, ["web1"])
    write_status(config, {"web1": fresh_entry(verify_result="ok")})
    files = []
    cases = {
        "old": {"verify_failed_snapshot": failed_record("x1")},
        "garbage": {
            "verify_failed_snapshot": failed_record("x2"),
            "verify_failed_others": [1, "x", None, [], {"id": {"n": 1}}],
        },
        "string": {"verify_failed_snapshot": failed_record("x3"), "verify_failed_others": "x"},
        "huge": {
            "verify_failed_snapshot": failed_record("x4"),
            "verify_failed_others": [failed_record(f"h{n}\x1b[2J") for n in range(200_000)],
        },
    }
    for number, (name, fields) in enumerate(cases.items()):
        path = tmp_path / f"{name}.json"
        data = {"server": f"s{number}", "hosts": {f"h{name}": fresh_entry(**fields)}}
        path.write_text(json.dumps(data))
        files.append(path)
    nan = tmp_path / "nan.json"
    nan.write_text('{"server": "s9", "hosts": {"hn": {"duration": NaN}}}')
    args = [arg for path in files for arg in ("--merge", str(path))]
    table = server(config, "status", *args)
    assert "Traceback" not in table.stderr, table.stderr
    assert "\x1b" not in table.stdout
    assert "20 other snapshots failed a drill too" in table.stdout, table.stdout
    merged = json.loads(server(config, "status", "--json", *args).stdout)
    assert "Traceback" not in merged
    page = tmp_path / "page.html"
    html = server(config, "status", "--html", str(page), *args)
    assert "Traceback" not in html.stderr and page.stat().st_size < 5 << 20
    refused = server(config, "status", "--merge", str(nan))
    assert refused.returncode == 1 and "NaN is not a JSON number" in refused.stderr


# -- 2. strict JSON -------------------------------------------------------------------


def test_strict_json_refuses_an_infinity_spelled_as_a_number():
    from pullback.common import jsontext

    with pytest.raises(ValueError):
        jsontext.loads(b'{"duration": 1e400}')


def test_a_sidecar_or_merged_file_with_1e400_reaches_nothing(tmp_path):
    """1e400 decodes to inf, yet the sidecar schema's bounds and the merged file's
    checks stop it (held)."""
    from pullback.common.archive import sidecar
    from pullback.common.errors import ArchiveError

    good = {
        "format": 1,
        "host": "web1",
        "stamp": "20261201T030000Z",
        "created": "2026-12-01T03:00:00Z",
        "pullback_version": "x",
        "status": "ok",
        "archive": {
            "name": "web1-20261201T030000Z.tar.zst",
            "size": 10,
            "sha256": "0" * 64,
            "compression": "zstd",
        },
        "services": [],
    }
    for path, value in (("duration", "1e400"), ("size", "1e400"), ("size", "-1e400")):
        data = json.loads(json.dumps(good))
        target = data["archive"] if path == "size" else data
        target[path] = "@@"
        text = json.dumps(data).replace('"@@"', value)
        with pytest.raises(ArchiveError):
            sidecar.parse(text)
    config = bare_config(tmp_path, ["web1"])
    write_status(config, {"web1": fresh_entry()})
    other = tmp_path / "other.json"
    other.write_text(
        '{"server": "s2", "hosts": {"w2": {"duration": 1e400, "repository_bytes": 1e400,'
        ' "snapshots": -1e400, "last_result": "stored"}}}'
    )
    merged = server(config, "status", "--json", "--merge", str(other))
    assert "Infinity" not in merged.stdout and "Traceback" not in merged.stderr


JOURNALS = {
    "a pid of 1e400 (one byte of a pid changed to 'e')": '{"pid": 1e400, "started": '
    '"2026-12-01T03:00:00Z", "hosts": {"web1": "storing"}}\n',
    "nested too deep": "[" * 200_000,
}


@pytest.mark.parametrize("damage", list(JOURNALS))
def test_a_damaged_journal_is_ignored_with_a_warning(tmp_path, damage):
    config = bare_config(tmp_path, ["web1"], metrics_file=str(tmp_path / "m.prom"))
    write_status(config, {"web1": fresh_entry()})
    (config.parent / "state" / "pull-in-progress.json").write_text(JOURNALS[damage])
    for args in (("status",), ("publish", "--if-failed"), ("pull",)):
        result = server(config, *args, env=KILLED)
        assert "Traceback" not in result.stderr, (args, result.stderr[-2000:])


def test_the_journal_is_the_servers_alone(tmp_path):
    """Who can write it: the pull makes state_dir 0700 and the journal 0600 (held)."""
    config = bare_config(tmp_path, ["web1"])
    state = config.parent / "state"
    state.rmdir()
    server(config, "pull")
    assert state.stat().st_mode & 0o777 == 0o700


# -- 2b. a hostile client's listing -----------------------------------------------------

HOSTILE = r"""
import json, os, subprocess, sys
mode, config = sys.argv[1], sys.argv[2]
request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
verb = request.split(" ", 1)[0]
argv = [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"]
if verb == "session":
    sys.stderr.write("refused request: unknown request\n")
    sys.exit(2)
if verb == "list":
    real = subprocess.run(argv, capture_output=True).stdout
    text = real.decode()
    if mode == "lock-list":
        data = json.loads(real)
        data["lock"] = ["\x1b[2J", 1]
        text = json.dumps(data)
    elif mode == "nan-duration":
        text = text.replace('"duration": ', '"duration": NaN, "x": ', 1)
    elif mode == "float-size":
        data = json.loads(real)
        for entry in data["archives"]:
            entry["size"] = float(entry["size"])
            entry["sidecar"]["archive"]["size"] = float(entry["sidecar"]["archive"]["size"])
        text = json.dumps(data)
    sys.stdout.write(text.strip() + "\n")
    sys.exit(0)
os.execv(sys.executable, argv)
"""


@pytest.fixture
def hostile_fleet(tmp_path):
    fleet = Fleet(tmp_path)
    good = fleet.add_host("good")
    good.make_archive()
    fleet.write_config(parallel=2, host_timeout="60s", metrics_file=str(tmp_path / "m.prom"))
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    yield fleet, script
    fleet.stop()


def make_evil(fleet: Fleet, script: Path, mode: str):
    host = fleet.add_host("evil")
    host.make_archive()
    host.sshd.stop()
    host.sshd.forced_command = f"{sys.executable} {script} {mode} {host.client.config}"
    host.sshd.start()
    return host


@pytest.mark.parametrize("mode", ["nan-duration", "float-size"])
def test_a_hostile_listing_s_nan_or_float_size(hostile_fleet, mode):
    """NaN in the listing: the host fails in a few words, the good host is stored, the
    metrics hold no NaN. Integral floats (size 123.0) pass the schema's "integer": the
    archive is passed over in words, nothing crashes (held)."""
    fleet, script = hostile_fleet
    make_evil(fleet, script, mode)
    result = fleet.server("pull", timeout=240)
    assert "[good] stored" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    metrics = (fleet.root / "m.prom").read_text()
    assert "NaN" not in metrics and "Inf" not in metrics
    evil = json.loads((fleet.state / "status.json").read_text())["hosts"]["evil"]
    if mode == "nan-duration":
        assert result.returncode == 1
        assert evil["last_result"] == "failed"
        assert "not a JSON number" in evil["reason"] or "not understood" in evil["reason"]
    else:  # refused in words ("its size differs from its sidecar"), or stored whole
        assert "internal error" not in evil.get("reason", ""), evil
        assert isinstance(evil.get("size", 0), int), evil


def test_a_lock_that_is_not_an_object_fails_in_plain_words(hostile_fleet):
    fleet, script = hostile_fleet
    make_evil(fleet, script, "lock-list")
    result = fleet.server("pull", timeout=240)
    assert "[good] stored" in result.stderr, result.stderr[-3000:]
    evil = json.loads((fleet.state / "status.json").read_text())["hosts"]["evil"]
    assert "AttributeError" not in evil.get("reason", ""), evil
    assert "has no attribute" not in evil.get("reason", ""), evil


# -- 3. repository groups -------------------------------------------------------------


def test_a_group_check_s_damage_fails_every_host_of_the_group(tmp_path):
    """Two hosts share the repository "web", a third has its own; a pack of "web"
    damaged, every part read: web1 and web2 fail (each row names the group and the host
    it ran with), db1 does not; --check, the metrics and the table agree (held)."""
    fleet = Fleet(tmp_path / "fleet")
    try:
        for name in ("web1", "web2", "db1"):
            host = fleet.add_host(name)
            (host.data / "big.bin").write_bytes(os.urandom(1 << 20))
            host.make_archive()
        fleet.host_extra.update({"web1": {"group": "web"}, "web2": {"group": "web"}})
        metrics = tmp_path / "m.prom"
        fleet.write_config(
            parallel=3,
            metrics_file=str(metrics),
            maintenance={"check_subsets": 1, "repository_lock_wait": "5s"},
        )
        pulled = fleet.server("pull")
        assert pulled.returncode == 0, pulled.stderr
        _damage_one_pack(fleet.repos / "web", "restic")
        result = fleet.server("maintain", "--no-verify", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
        assert hosts["web1"]["status"] == hosts["web2"]["status"] == "failed"
        assert hosts["db1"]["status"] == "ok"
        (shared,) = [s for s in hosts["web1"]["steps"] if s["name"] == "check" and not s["ok"]]
        assert shared["detail"].startswith("group web, with web2: ")
        status = json.loads(fleet.server("status", "--json").stdout)["hosts"]
        assert status["web1"]["maintain_failed"] == ["check"]
        assert status["web1"]["maintain_reason"].startswith("check: group web, with web2")
        table = fleet.server("status").stdout
        assert table.count("the last maintenance failed: check:") == 2, table
        found = samples(metrics)
        for name, ok in (("web1", 0), ("web2", 0), ("db1", 1)):
            assert found[("pullback_last_maintain_ok", (("host", name),))] == ok, name
        # maintain of one member only: it is the group's last, checks, and fails alone
        one = fleet.server("maintain", "--no-verify", "--host", "web1", "--json")
        assert one.returncode == 1
        (only,) = json.loads(one.stdout)["hosts"]
        assert any(s["name"] == "check" and not s["ok"] for s in only["steps"])
    finally:
        fleet.stop()


# -- 4. the cut-short pull's gauges ---------------------------------------------------


@pytest.fixture
def cut_fleet(tmp_path):
    fleet = Fleet(tmp_path)
    fleet.add_host("good").make_archive()
    fleet.add_host("hung").make_archive()
    out = tmp_path / "out"
    fleet.write_config(
        metrics_file=str(out / "pullback.prom"),
        status_page=str(out / "index.html"),
        ssh={"connect_timeout": "120s"},
    )
    first = fleet.server("pull")
    assert first.returncode == 0, first.stderr
    yield fleet, out / "pullback.prom", out / "index.html"
    fleet.stop()


def test_a_dry_run_and_a_maintenance_keep_the_cut_short_shown(cut_fleet):
    """After a kill: a dry run (which keeps no journal) and a maintenance both rewrite
    the outputs and keep saying hung was cut short; publish during a dry run too;
    publish --if-failed after exit 1 (a failed host) rewrites in under 15 s (held)."""
    fleet, metrics, page = cut_fleet
    with frozen(fleet, "hung"):
        run = start_stuck_pull(fleet)
        kill_tree(run)
        code, err, _ = publish_after_stop(fleet, KILLED)
        assert code == 0, err
        assert cut_short(samples(metrics), "hung") == 1
    dry = fleet.server("pull", "--dry-run")
    assert dry.returncode in (0, 1), dry.stderr
    assert cut_short(samples(metrics), "hung") == 1
    maintained = fleet.server("maintain", "--no-verify")
    assert maintained.returncode == 0, maintained.stdout + maintained.stderr
    assert cut_short(samples(metrics), "hung") == 1
    assert "was killed while connecting" in page.read_text()
    failed = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "1"}
    code, err, took = publish_after_stop(fleet, failed)
    assert code == 0 and took < 15, (err, took)
    assert cut_short(samples(metrics), "hung") == 1
    good = fleet.server("pull")
    assert good.returncode == 0, good.stderr
    found = samples(metrics)
    assert cut_short(found, "hung") == 0
    assert ("pullback_pull_cut_short_started_timestamp_seconds", ()) not in found
    assert "the next pull reports it" not in page.read_text()  # (its own warning stays)


def test_a_pull_of_another_host_keeps_the_cut_short_of_the_one_killed(cut_fleet):
    fleet, metrics, page = cut_fleet
    with frozen(fleet, "hung"):
        run = start_stuck_pull(fleet)
        kill_tree(run)
        code, err, _ = publish_after_stop(fleet, KILLED)
        assert code == 0, err
        assert cut_short(samples(metrics), "hung") == 1
        assert "was killed while connecting" in page.read_text()
    fleet.hosts["good"].make_archive({"more.txt": b"more\n"})
    other = fleet.server("pull", "--host", "good")
    assert other.returncode == 0, other.stderr
    assert cut_short(samples(metrics), "hung") == 1, "hung was not pulled since its kill"
    assert "was killed while connecting" in page.read_text()
    then = fleet.server("pull", "--host", "hung")
    assert "was killed while connecting" in then.stderr, then.stderr  # reported once
    assert cut_short(samples(metrics), "hung") == 0


def dead_pid() -> int:
    """A pid no process has now."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def left_journal(config: Path, hosts: dict, started: str = "2026-12-01T03:00:00Z") -> None:
    journal = {"pid": dead_pid(), "started": started, "hosts": hosts}
    (config.parent / "state" / "pull-in-progress.json").write_text(json.dumps(journal))


def test_publish_with_a_journal_of_unknown_hosts_and_a_garbage_start(tmp_path):
    """A journal naming a host no longer configured, hostile-looking phases and a start
    that is no time: the gauges name configured hosts only, the file parses, no
    started gauge of NaN (held)."""
    metrics = tmp_path / "m.prom"
    config = bare_config(
        tmp_path, ["web1"], metrics_file=str(metrics), status_page=str(tmp_path / "p.html")
    )
    write_status(config, {"web1": fresh_entry()})
    left_journal(
        config,
        {"web1": "storing\n# HELP x\x1b[2J", 'gone"} 1\nx{a="': "connecting"},
        started="not a time\nNaN",
    )
    result = server(config, "publish", "--if-failed", env=KILLED)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr
    found = samples(metrics)
    assert cut_short(found, "web1") == 1
    assert [k for k in found if k[0] == "pullback_pull_cut_short"] == [
        ("pullback_pull_cut_short", (("host", "web1"),))
    ]
    assert "NaN" not in metrics.read_text()
    assert "\x1b" not in (tmp_path / "p.html").read_text()


def test_publish_if_failed_after_a_kill_systemd_calls_success(tmp_path):
    metrics = tmp_path / "m.prom"
    config = bare_config(tmp_path, ["web1"], metrics_file=str(metrics))
    write_status(config, {"web1": fresh_entry()})
    left_journal(config, {"web1": "storing"})
    hup = {"SERVICE_RESULT": "success", "EXIT_CODE": "killed", "EXIT_STATUS": "HUP"}
    result = server(config, "publish", "--if-failed", env=hup)
    assert result.returncode == 0, result.stderr
    assert metrics.exists() and cut_short(samples(metrics), "web1") == 1


def test_a_group_copy_s_damage_fails_every_host_s_copy(tmp_path):
    """The copy pass of maintain (copy.retention set): the group's copy "web" damaged,
    every part read: both hosts' copy rows fail with the group's words, the primary
    rows stay OK (held)."""
    fleet = Fleet(tmp_path / "fleet")
    copies = tmp_path / "copies"
    try:
        for name in ("web1", "web2"):
            host = fleet.add_host(name)
            (host.data / "big.bin").write_bytes(os.urandom(1 << 20))
            host.make_archive()
        fleet.host_extra.update({"web1": {"group": "web"}, "web2": {"group": "web"}})
        fleet.write_config(
            parallel=2,
            copy={"repository_root": str(copies), "retention": {"keep_last": 5}},
            maintenance={"check_subsets": 1, "repository_lock_wait": "5s"},
        )
        pulled = fleet.server("pull")
        assert pulled.returncode == 0, pulled.stderr
        copied = fleet.server("copy", "--no-verify")
        assert copied.returncode == 0, copied.stdout + copied.stderr
        _damage_one_pack(copies / "web", "restic")
        result = fleet.server("maintain", "--no-verify", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        found = {(h["host"], h.get("scope", "")): h for h in json.loads(result.stdout)["hosts"]}
        assert found[("web1", "")]["status"] == found[("web2", "")]["status"] == "ok"
        assert found[("web1", "copy")]["status"] == found[("web2", "copy")]["status"] == "failed"
        status = json.loads(fleet.server("status", "--json").stdout)["hosts"]
        assert status["web1"]["copy"]["maintain_failed"] == ["check"]
        assert status["web1"].get("maintain_result") == "ok"
        shown = fleet.server("status")
        table = shown.stdout + shown.stderr
        assert table.count("the copy's last maintenance failed: check:") == 2, table
        assert "group web, with web2" in table, table
    finally:
        fleet.stop()
