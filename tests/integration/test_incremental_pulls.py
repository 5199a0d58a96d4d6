"""Incremental pulls end to end: a client making deltas behind a real sshd,
real restic; the next day travels as a delta and every snapshot restores to exactly that
day's tree; missed days are replayed; a lost or damaged base falls back to the full in
the same pull; a chain the server cannot use makes the client's next archive a full."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pullback.common.archive import deltaops, tarformat
from pullback.common.archive.deltaops import BASE, DATA_KEY
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.common.fsutil import make_hole
from pullback.server import cli as server_cli
from pullback.server.backends import restic as restic_backend
from tests.helpers.archives import MTIME
from tests.helpers.fleet import Fleet, FleetHost
from tests.helpers.sshd import serve_command
from tests.helpers.tree import snapshot

pytestmark = pytest.mark.integration

ROW = b"INSERT INTO items VALUES (%d, 'an item of the day, with some words');\n"


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.stop()


def incremental_host(fleet: Fleet, name: str = "web1", enabled: bool | str = True) -> FleetHost:
    host = fleet.add_host(name)
    host.client.write_config(
        incremental={"enabled": enabled, "cache_dir": str(fleet.root / name / "cache")}
    )
    data = host.data
    for i in range(40):
        (data / "docs" / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (data / "docs" / f"d{i % 4}" / f"note{i}.txt").write_text(f"note {i}\n" * 20)
    (data / "dump.sql").write_bytes(b"".join(ROW % i for i in range(60_000)))
    # a file of database pages: binary, and compressible (a first-seen file whose bytes do
    # not compress is cut into chunks only at its first change: test_first_day_cuts.py)
    # seeded: where the random pages hold newlines decides the chunks' sizes, so the size
    # of a day's delta: with os.urandom a day's one changed chunk was sometimes near
    # CHUNK_MAX (a 113 KB delta in CI against 16-26 KB; seeds 3 and 7 give 61-66 KB,
    # past the test's bound of a tenth of the full archive; seed 1 gives 18.7 KB)
    pages = random.Random(1)
    (data / "blob.bin").write_bytes(
        b"".join(pages.randbytes(1024) + bytes(3072) for _ in range(512))
    )
    os.link(data / "docs" / "d1" / "note1.txt", data / "docs" / "hard.txt")
    os.symlink("d1/note1.txt", data / "docs" / "soft")
    return host


def run_client(host: FleetHost, *args: str) -> dict:
    """Run the client (after the racy-clean window); return the new archive's sidecar."""
    time.sleep(2.1)  # files younger than 2 s are read again next run: let them age
    before = set(host.client.published())
    result = host.client.cli("run", *args)
    assert result.returncode == 0, result.stderr
    (new,) = set(host.client.published()) - before
    return host.client.sidecar(new)


def pull(fleet: Fleet, *args: str) -> dict:
    result = fleet.server("pull", "--host", "web1", *args)
    status = json.loads((fleet.state / "status.json").read_text())
    return {"rc": result.returncode, "log": result.stderr, "host": status["hosts"]["web1"]}


def restored(fleet: Fleet, snapshot_id: str, target: Path, proven: bool = True) -> dict:
    """The restored tree of the host's data, its manifest checked first (``proven``)."""
    subprocess.run(
        ["restic", "restore", snapshot_id, "--target", str(target)],
        env=fleet.repo_env("web1"),
        capture_output=True,
        check=True,
    )
    (manifest,) = list(target.rglob("MANIFEST.sha256"))
    if not proven:
        return snapshot(
            manifest.parent / "services/app/files" / str(fleet.hosts["web1"].data).lstrip("/")
        )
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"],
        cwd=manifest.parent,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    (files,) = [p for p in manifest.parent.glob("services/app/files")]
    return snapshot(files / str(fleet.hosts["web1"].data).lstrip("/"))


def day_of_changes(data: Path, day: int) -> None:
    """A day of work: rows appended, a note edited, one deleted, one added, a chmod, a
    hard link broken, a symlink retargeted, the blob changed in place."""
    with open(data / "dump.sql", "ab") as handle:
        handle.write(b"".join(ROW % (100_000 * day + i) for i in range(500)))
    (data / "docs" / "d2" / f"note{2 + 4 * day % 36}.txt").write_text(f"edited on day {day}\n")
    victim = data / "docs" / "d3" / f"note{3 + 4 * day}.txt"
    victim.unlink(missing_ok=True)
    (data / "docs" / f"new-{day}.txt").write_text(f"new on day {day}\n")
    os.chmod(data / "docs" / "d0" / "note0.txt", 0o600 if day % 2 else 0o640)
    hard = data / "docs" / "hard.txt"
    if day == 1:
        hard.unlink()
        hard.write_text("no longer a link\n")
    soft = data / "docs" / "soft"
    soft.unlink()
    os.symlink(f"d0/note{4 * day % 40}.txt", soft)
    with open(data / "blob.bin", "r+b") as handle:
        handle.seek(4096 * day)
        handle.write(random.Random(day).randbytes(100))


def snapshot_ids(fleet: Fleet) -> list[str]:
    return [s["id"] for s in fleet.snapshots("web1")]


def test_the_next_day_travels_as_a_delta_and_restores_exactly(fleet, tmp_path):
    """The client as installed (``incremental.enabled: auto``): a full archive until the
    server stored one and said that it applies deltas; the next day is a delta."""
    host = incremental_host(fleet, enabled="auto")
    first = run_client(host)
    assert first["format"] == 1 and first["archive"]["kind"] == "full"
    day1 = pull(fleet)
    assert day1["rc"] == 0, day1["log"]
    marks = host.client.archives / ".fetched-marks"
    said = ["server-applies-deltas", "server-applies-lean-deltas"]
    assert sorted(os.listdir(marks)) == [*said, first["archive"]["name"]]
    trees = [snapshot(host.data)]

    day_of_changes(host.data, 1)
    second = run_client(host)
    # a lean delta (protocol 5): its unchanged files not named, its removed ones listed
    assert second["format"] == 3 and second["archive"]["kind"] == "delta"
    assert second["archive"]["base"]["name"] == first["archive"]["name"]
    # what changed travels: a fraction of the full archive
    assert second["archive"]["size"] < first["archive"]["size"] / 10
    day2 = pull(fleet)
    assert day2["rc"] == 0, day2["log"]
    assert day2["host"]["last_result"] == "stored"
    trees.append(snapshot(host.data))

    # a delta alone is not a tree: restoring from it unpacks its chain (full, then delta)
    delta_file = host.client.archives / second["archive"]["name"]
    target = tmp_path / "local"
    local = host.client.cli(
        "restore", "--service", "app", "--from", str(delta_file), "--target", str(target)
    )
    assert local.returncode == 0, local.stderr
    assert "unpacking its chain of 2 archives" in local.stderr
    assert snapshot(target / str(host.data).lstrip("/")) == trees[-1]
    # ... and says so when the chain is not all there
    full_file = host.client.archives / first["archive"]["name"]
    full_file.rename(tmp_path / "aside")
    broken = host.client.cli(
        "restore", "--service", "app", "--from", str(delta_file), "--target", str(target)
    )
    assert broken.returncode == 2, broken.stderr
    assert "is a delta archive (only what changed since" in broken.stderr
    (tmp_path / "aside").rename(full_file)
    # ... and when its sidecar, which names the chain, is missing
    sidecar = delta_file.with_name(delta_file.name + ".json")
    sidecar.rename(tmp_path / "sidecar-aside")
    blind = host.client.cli(
        "restore", "--service", "app", "--from", str(delta_file), "--target", str(target)
    )
    assert blind.returncode == 2, blind.stderr
    assert f"its sidecar {delta_file.name}.json, which names them, is missing" in blind.stderr
    (tmp_path / "sidecar-aside").rename(sidecar)
    # a delta in fetched/ (deltas switched off later) finds its full in the directory above
    fetched = host.client.archives / "fetched"
    fetched.mkdir(exist_ok=True)
    for path in (delta_file, delta_file.with_name(delta_file.name + ".json")):
        path.rename(fetched / path.name)
    target = tmp_path / "from-fetched"
    moved = host.client.cli(
        "restore",
        "--service",
        "app",
        "--from",
        str(fetched / delta_file.name),
        "--target",
        str(target),
    )
    assert moved.returncode == 0, moved.stderr
    assert snapshot(target / str(host.data).lstrip("/")) == trees[-1]
    for path in fetched.iterdir():
        path.rename(host.client.archives / path.name)

    ids = snapshot_ids(fleet)
    assert len(ids) == 2
    for number, (snap, tree) in enumerate(zip(ids, trees, strict=True)):
        assert restored(fleet, snap, tmp_path / f"r{number}") == tree


def test_missed_days_are_replayed_and_a_lost_base_falls_back_to_the_full(fleet, tmp_path):
    host = incremental_host(fleet)
    run_client(host)
    assert pull(fleet)["rc"] == 0
    for day in (1, 2):  # the server misses two days
        day_of_changes(host.data, day)
        side = run_client(host)
        assert side["archive"]["kind"] == "delta"
    replay = pull(fleet, "-v")
    assert replay["rc"] == 0, replay["log"]
    assert "(2 of 2)" in replay["log"]
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r2") == snapshot(host.data)

    # the server loses its staging tree: the next delta is applied after the full
    staging = fleet.state / "staging" / "web1"
    shutil.rmtree(staging)
    day_of_changes(host.data, 3)
    run_client(host)
    fallback = pull(fleet, "-v")
    assert fallback["rc"] == 0, fallback["log"]
    assert "(4 of 4)" in fallback["log"]
    # said as it is (the index outlived its tree), not as one file it missed first
    assert any("staging holds no indexed tree" in w for w in fallback["host"]["warnings"])
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r3") == snapshot(host.data)

    # a file of staging changes behind the index's back: found, and the same pull falls
    # back to the chain's full archive, reported
    note = next(staging.rglob("note5.txt"))
    note.write_text("bit rot\n")
    day_of_changes(host.data, 4)
    run_client(host)
    damaged = pull(fleet)
    assert damaged["rc"] == 0, damaged["log"]
    assert any("fell back to a full transfer" in w for w in damaged["host"]["warnings"])
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r4") == snapshot(host.data)


def test_a_full_archive_made_between_two_pulls_is_missed_days_not_a_fallback(fleet, tmp_path):
    """The client made a full archive (``run --full``) and a delta on it before the next
    pull: staging still holds the tree the last pull stored, which is not in the new
    chain, and the pull applies the chain from its full archive. Nothing was lost: no
    fallback warning, ``fell_back`` false, said in the log (an outside test saw a
    fallback reported, with its metric)."""
    host = incremental_host(fleet)
    run_client(host)
    assert pull(fleet)["rc"] == 0
    day_of_changes(host.data, 1)
    assert run_client(host)["archive"]["kind"] == "delta"
    assert pull(fleet)["rc"] == 0
    day_of_changes(host.data, 2)
    full = run_client(host, "--full")["archive"]["name"]
    day_of_changes(host.data, 3)
    assert run_client(host)["archive"]["kind"] == "delta"
    dry = fleet.server("pull", "--host", "web1", "--dry-run")
    assert "a full archive made since the last pull" in dry.stdout + dry.stderr
    missed = pull(fleet, "-v")
    assert missed["rc"] == 0, missed["log"]
    assert missed["host"]["fell_back"] is False
    assert not any("fell back" in w for w in missed["host"]["warnings"]), missed["host"]
    assert f"on the full archive {full}, made since staging's" in missed["log"]
    assert "(2 of 2)" in missed["log"]
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)
    # a lost staging tree is still a fallback
    shutil.rmtree(fleet.state / "staging" / "web1")
    day_of_changes(host.data, 4)
    run_client(host)
    lost = pull(fleet)
    assert lost["host"]["fell_back"] is True


def test_a_chain_the_clients_own_run_ends_during_a_pull_is_listed_again(fleet, tmp_path):
    """The server replays a chain (its staging was lost) while the client's own run makes
    a full archive, whose retention deletes the chain's later archives: the pull does
    not fail with a resume that cannot come; it lists the client again and fetches the
    new full archive, reported (found by an outside tester)."""
    host = incremental_host(fleet)
    run_client(host)
    assert pull(fleet)["rc"] == 0
    day_of_changes(host.data, 1)
    run_client(host)
    day_of_changes(host.data, 2)
    second = run_client(host)["archive"]["name"]
    shutil.rmtree(fleet.state / "staging" / "web1")
    # the client's run starts right as the server asks for the chain's second delta
    flag = run_full_when_asked_for(host, second, tmp_path)
    relisted = pull(fleet, "-v")
    assert flag.exists()
    assert relisted["rc"] == 0, relisted["log"]
    warnings = relisted["host"]["warnings"]
    assert any(f"{second} is no longer on the client" in w for w in warnings), warnings
    assert "resumes" not in relisted["log"]
    assert relisted["host"]["fell_back"] is False  # what it stored is a full archive
    (newest,) = host.client.published()
    assert host.client.sidecar(newest)["archive"]["kind"] == "full"
    assert relisted["host"]["archive"] == newest.name
    assert not list((fleet.state / "partial").rglob(f"{second}*"))
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)


def test_a_first_pull_of_a_chain_is_not_a_fallback(fleet):
    """A host pulled for the first time whose newest archive is already a delta
    (``enabled: true``): its chain is applied from its full archive, and that is no
    fallback (nothing was lost), said in the log only (found by an outside review)."""
    host = incremental_host(fleet)
    run_client(host)
    day_of_changes(host.data, 1)
    assert run_client(host)["archive"]["kind"] == "delta"
    dry = fleet.server("pull", "--host", "web1", "--dry-run")  # says the same beforehand
    assert "staging holds none of its bases, a first pull" in dry.stdout + dry.stderr
    first = pull(fleet, "-v")
    assert first["rc"] == 0, first["log"]
    assert first["host"]["fell_back"] is False
    assert not any("fell back" in w for w in first["host"]["warnings"])
    assert "first pull: " in first["log"] and "(2 of 2)" in first["log"]


def run_full_when_asked_for(host: FleetHost, name: str, tmp_path: Path) -> Path:
    """Make the client's forced command run ``pullback-client run --full`` (once) just
    before it answers ``send <name>``, as an outside tester timed it (sshd reads
    authorized_keys at each login), in a session too (tests/helpers/serve_hook.py).
    Returns the file that says it ran."""
    serve = serve_command(host.client.config)
    flag = tmp_path / "ran"
    hook = Path(__file__).parent.parent / "helpers" / "serve_hook.py"
    wrapper = tmp_path / "serve.sh"
    wrapper.write_text(
        f"#!/bin/sh\nexec {sys.executable} {hook} {name} {flag} {host.client.config}\n"
    )
    wrapper.chmod(0o755)
    auth = host.sshd.root / "authorized_keys"
    auth.write_text(auth.read_text().replace(f'command="{serve}"', f'command="{wrapper}"'))
    time.sleep(2.1)  # the files' racy window
    return flag


def test_a_full_archive_gone_before_its_first_byte_leaves_staging_as_it_was(fleet, tmp_path):
    """The newest archive is a full one, and the client's own run replaces it just as the
    server asks for it: nothing arrived, so staging and its index are kept (not emptied,
    which would make restic read the whole tree again); the same pull fetches the new
    one (found by an outside review)."""
    host = incremental_host(fleet)
    run_client(host)
    assert pull(fleet)["rc"] == 0
    day_of_changes(host.data, 1)
    wanted = run_client(host, "--full")["archive"]["name"]
    flag = run_full_when_asked_for(host, wanted, tmp_path)
    relisted = pull(fleet, "-v")
    assert flag.exists()
    assert relisted["rc"] == 0, relisted["log"]
    assert any(f"{wanted} is no longer on the client" in w for w in relisted["host"]["warnings"])
    assert "emptied the staging tree" not in relisted["log"], relisted["log"]
    (newest,) = host.client.published()
    assert relisted["host"]["archive"] == newest.name != wanted
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)


def regular_members(path: Path) -> dict[str, tarfile.TarInfo]:
    """The regular-file members of a client's archive, read by Python's tarfile."""
    with subprocess.Popen(["zstd", "-q", "-d", "-c", str(path)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            return {m.name: m for m in tar if m.isreg()}


def zstd_member(path: Path, name: str) -> bytes:
    """The data of member ``name`` of a client's archive, as GNU tar extracts it."""
    out = subprocess.run(
        ["tar", "--zstd", "-xOf", str(path), name], capture_output=True, check=True
    )
    return out.stdout


@pytest.mark.parametrize("form", ["lean", "format 2"])
def test_an_unchanged_file_travels_as_its_name_and_keeps_its_metadata(fleet, tmp_path, form):
    """A file the cache vouches for, ctime included, is a ``same`` member: its name and
    nothing else (mode, owner and time empty), a few bytes compressed; in a lean delta
    (protocol 5) not even that. The server leaves it untouched, and the snapshot still
    restores with every file's metadata. A file only chmod'ed is a ``base`` member
    carrying its new mode. ``format 2``: a client that a server of 0.2.1 told only that
    it applies deltas (the lean mark removed), whose deltas this server still applies.
    Measured here: what the next day of 40 unchanged notes costs per file."""
    host = incremental_host(fleet)
    os.setxattr(host.data / "docs" / "d0" / "note4.txt", "user.origin", b"day zero")
    run_client(host)
    assert pull(fleet)["rc"] == 0
    if form == "format 2":
        (host.client.archives / ".fetched-marks" / "server-applies-lean-deltas").unlink()
    os.chmod(host.data / "docs" / "d1" / "note5.txt", 0o600)
    side = run_client(host)
    assert side["format"] == (3 if form == "lean" else 2)
    archive = host.client.archives / side["archive"]["name"]
    members = regular_members(archive)
    prefix = f"services/app/files{host.data}/docs"
    kinds = [m.pax_headers.get("PULLBACK.data", "full") for m in members.values()]
    if form == "lean":
        assert f"{prefix}/d0/note4.txt" not in members
        # only a file of several links stays a ``same`` member (its links travel)
        root = f"services/app/files{host.data}"
        for name, each in members.items():
            if each.pax_headers.get("PULLBACK.data") == "same":
                assert os.stat(host.data / name[len(root) + 1 :]).st_nlink > 1, name
        assert len(members) < 10, list(members)
        assert zstd_member(archive, "REMOVED.list") == b""
    else:
        same = members[f"{prefix}/d0/note4.txt"]
        assert same.pax_headers["PULLBACK.data"] == "same"
        assert (same.mode, same.uid, same.mtime, same.size) == (0, 0, 0, 0)
        assert "SCHILY.xattr.user.origin" not in same.pax_headers
        assert kinds.count("same") >= 40, kinds
    chmodded = members[f"{prefix}/d1/note5.txt"]
    assert chmodded.pax_headers["PULLBACK.data"] == "base" and chmodded.mode == 0o600
    # the manifest member lists only the files whose bytes travel; the sidecar names
    # the complete manifest, which the server rebuilds into staging
    manifest = members["MANIFEST.sha256"]
    assert manifest.pax_headers["PULLBACK.manifest"] == "partial"
    listed = zstd_member(archive, "MANIFEST.sha256").decode()
    assert f"{prefix}/d0/note4.txt" not in listed and f"{prefix}/d1/note5.txt" not in listed
    pulled = pull(fleet)
    assert pulled["rc"] == 0, pulled["log"]
    complete = (fleet.state / "staging" / "web1" / "MANIFEST.sha256").read_bytes()
    assert hashlib.sha256(complete).hexdigest() == side["archive"]["manifest_sha256"]
    assert f"{prefix}/d0/note4.txt".encode() in complete
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"],
        cwd=fleet.state / "staging" / "web1",
        capture_output=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    target = tmp_path / "r"
    assert restored(fleet, snapshot_ids(fleet)[-1], target) == snapshot(host.data)
    (note,) = target.rglob("d0/note4.txt")
    assert os.getxattr(note, "user.origin") == b"day zero"


def test_a_dry_run_says_what_a_delta_would_take(fleet, tmp_path):
    """``pull --dry-run`` of a delta names its chain and what it adds up to; when staging
    holds none of its bases, that the chain's full comes first, a fallback (it said only
    the newest archive's size: an outside tester saw "135.6 KiB" for a 450 MiB replay)."""
    host = incremental_host(fleet)
    full = run_client(host)["archive"]
    assert pull(fleet)["rc"] == 0
    for day in (1, 2):
        day_of_changes(host.data, day)
        newest = run_client(host)["archive"]
    dry = fleet.server("pull", "--host", "web1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    said = dry.stdout + dry.stderr
    assert f"would fetch {newest['name']}, a delta onto staging's {full['name']}" in said, said
    assert "(2 archives, " in said
    shutil.rmtree(fleet.state / "staging" / "web1")
    (fleet.state / "staging" / "web1.index.db").unlink()
    dry = fleet.server("pull", "--host", "web1", "--dry-run")
    said = dry.stdout + dry.stderr
    assert f"from its chain's full archive {full['name']} (3 archives, " in said, said
    assert "staging holds none of its bases, a fallback" in said
    assert len(snapshot_ids(fleet)) == 1  # nothing stored


def test_a_chain_the_server_cannot_use_makes_the_next_archive_full(fleet, tmp_path):
    host = incremental_host(fleet)
    full = run_client(host)
    assert pull(fleet)["rc"] == 0
    day_of_changes(host.data, 1)
    run_client(host)
    # the server lost its base and the client its full archive: no way to the newest
    shutil.rmtree(fleet.state / "staging" / "web1")
    name = full["archive"]["name"]
    for path in (host.client.archives / name, host.client.archives / f"{name}.json"):
        path.unlink()
    broken = pull(fleet)
    assert broken["rc"] == 1
    reason = broken["host"]["reason"]
    assert "its base" in reason and "not on the client" in reason
    assert (host.client.archives / ".fetched-marks" / "want-full").exists()

    after = run_client(host)
    assert after["archive"]["kind"] == "full"
    assert not (host.client.archives / ".fetched-marks" / "want-full").exists()
    healed = pull(fleet)
    assert healed["rc"] == 0, healed["log"]
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)
    # the client keeps the newest full and the deltas since, nothing older
    kinds = [host.client.sidecar(a)["archive"]["kind"] for a in host.client.published()]
    assert kinds == ["full"]


MiB = 1 << 20


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_a_changed_sparse_image_travels_as_its_changes_and_stays_sparse(fleet, tmp_path):
    """A VM image (a sparse file of 64 MiB holding 5 MiB) changed in place, a hole
    filled and another made: the next day's archive holds the changed blocks, the
    server patches its staging copy in place, and the holes stay holes all along."""
    host = incremental_host(fleet)
    image = host.data / "vm.img"
    write_at(image, 0, os.urandom(2 * MiB))
    write_at(image, 24 * MiB, os.urandom(2 * MiB))
    write_at(image, 48 * MiB, os.urandom(MiB))
    os.truncate(image, 64 * MiB)
    assert image.stat().st_blocks * 512 < 6 * MiB  # the file system keeps holes
    first = run_client(host)
    assert pull(fleet)["rc"] == 0
    staged = fleet.state / "staging" / "web1" / "services/app/files"
    staged = staged / str(host.data).lstrip("/") / "vm.img"
    inode = staged.stat().st_ino
    trees = [snapshot(host.data)]

    write_at(image, 24 * MiB + 4096, os.urandom(64 << 10))  # blocks rewritten
    write_at(image, 12 * MiB, os.urandom(128 << 10))  # a hole filled
    fd = os.open(image, os.O_RDWR)
    try:
        assert make_hole(fd, 48 * MiB, MiB)  # a region discarded (fstrim, a freed block)
    finally:
        os.close(fd)
    second = run_client(host)
    assert second["archive"]["kind"] == "delta"
    # what changed travels (192 KiB of new bytes, the chunks around them, the notes'
    # changes): not the image's 5 MiB, nor its 64
    assert second["archive"]["size"] < MiB, second["archive"]["size"]
    assert first["archive"]["size"] > 5 * MiB
    day2 = pull(fleet, "-v")
    assert day2["rc"] == 0, day2["log"]
    trees.append(snapshot(host.data))
    st = staged.stat()
    assert st.st_ino == inode  # patched in place: only the changes were written
    assert st.st_size == 64 * MiB and st.st_blocks * 512 < 6 * MiB  # holes kept and made
    assert (
        hashlib.sha256(staged.read_bytes()).digest() == hashlib.sha256(image.read_bytes()).digest()
    )

    # moved blocks (the image rewritten from another offset) rebuild it beside: sparse too
    data = image.read_bytes()
    os.truncate(image, 0)
    write_at(image, 8 * MiB, data[: 4 * MiB])
    os.truncate(image, 64 * MiB)
    third = run_client(host)
    assert third["archive"]["kind"] == "delta" and third["archive"]["size"] < MiB
    assert pull(fleet)["rc"] == 0
    trees.append(snapshot(host.data))
    st = staged.stat()
    assert st.st_ino != inode and st.st_blocks * 512 < 6 * MiB

    ids = snapshot_ids(fleet)
    assert len(ids) == 3
    for number, (snap, tree) in enumerate(zip(ids, trees, strict=True)):
        assert restored(fleet, snap, tmp_path / f"r{number}") == tree


def publish_delta(host: FleetHost, base: dict, members: list[bytes], manifest: dict) -> str:
    """Publish a hand-made delta on ``base`` (its sidecar) into the client's archive
    directory, as a compromised client would; returns its name."""
    lines = b"".join(
        format_line(n, hashlib.sha256(d).hexdigest()) for n, d in sorted(manifest.items())
    )
    tail = tarformat.header(
        MANIFEST_NAME, tarformat.REGTYPE, mode=0o644, size=len(lines), mtime_ns=MTIME
    )
    body = b"".join(members) + tail + lines + bytes((-len(lines)) % 512) + bytes(1024)
    data = subprocess.run(["zstd", "-q", "-c"], input=body, capture_output=True).stdout
    when = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    name = f"web1-{stamp}.tar.zst"
    (host.client.archives / name).write_bytes(data)
    side = json.loads(json.dumps(base))
    side.update(format=2, stamp=stamp, created=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    side["archive"].update(
        name=name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        kind="delta",
        manifest_sha256=hashlib.sha256(lines).hexdigest(),
        base={
            "name": base["archive"]["name"],
            "manifest_sha256": base["archive"]["manifest_sha256"],
        },
    )
    (host.client.archives / f"{name}.json").write_text(json.dumps(side))
    return name


def member(name: str, data: bytes = b"", pax=None) -> bytes:
    head = tarformat.header(
        name, tarformat.REGTYPE, mode=0o644, size=len(data), mtime_ns=MTIME, pax=pax
    )
    return head + data + bytes((-len(data)) % 512)


@pytest.mark.parametrize("attack", ["a file the base never had", "a copy past the base"])
def test_a_hostile_delta_stores_nothing_and_asks_for_a_full(fleet, tmp_path, attack):
    host = incremental_host(fleet)
    full = run_client(host)
    assert pull(fleet)["rc"] == 0
    target = f"services/app/files{host.data}/docs/d0/note0.txt"
    if attack == "a file the base never had":
        members = [member(f"services/app/files{host.data}/etc/shadow", pax=[(DATA_KEY, BASE)])]
        manifest = {f"services/app/files{host.data}/etc/shadow": b"root::0:0\n"}
    else:
        stream = io.BytesIO()
        deltaops.encode([deltaops.Copy(0, 10_000)], stream)
        pax = [(DATA_KEY, deltaops.DELTA), (deltaops.REALSIZE_KEY, b"10000")]
        members = [member(target, stream.getvalue(), pax)]
        manifest = {target: bytes(10_000)}
    time.sleep(1.1)  # a stamp of its own
    publish_delta(host, full, members, manifest)
    attacked = pull(fleet)
    assert attacked["rc"] == 1, attacked["log"]
    assert "nothing was stored" in attacked["host"]["reason"]
    assert len(snapshot_ids(fleet)) == 1
    assert (host.client.archives / ".fetched-marks" / "want-full").exists()
    # the staging tree holds nothing of it, and no index that could vouch for it
    assert not (fleet.state / "staging" / "web1.index.db").exists()
    assert not list((fleet.state / "staging").rglob("shadow"))
    # the client's next run is a full archive, and it heals the host
    healed = run_client(host)
    assert healed["archive"]["kind"] == "full"
    assert pull(fleet)["rc"] == 0
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)


def test_renamed_files_and_directories_travel_as_names(fleet, tmp_path):
    host = incremental_host(fleet)
    run_client(host)
    assert pull(fleet)["rc"] == 0
    data = host.data
    (data / "docs" / "d1").rename(data / "docs" / "renamed-dir")
    (data / "blob.bin").rename(data / "moved-blob.bin")
    (data / "dump.sql").rename(data / "dump-old.sql")
    with open(data / "dump-old.sql", "ab") as handle:  # renamed and grown
        handle.write(b"".join(ROW % (900_000 + i) for i in range(100)))
    side = run_client(host)
    assert side["archive"]["kind"] == "delta"
    # the 2 MiB blob and the 3.5 MB dump do not travel again: a few KB do
    assert side["archive"]["sent_bytes"] < 100_000, side["archive"]
    pulled = pull(fleet)
    assert pulled["rc"] == 0, pulled["log"]
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(data)


@pytest.mark.parametrize(("first", "added"), [(2 << 20, 3 << 20), (4 << 20, 14 << 20)])
def test_a_grown_file_that_did_not_compress_sends_only_what_it_grew_by(
    fleet, tmp_path, first, added
):
    """A first-seen file whose bytes do not compress gets no chunk list; grown (within
    the read-ahead size, or past it: streamed), its old part is proved by its digest
    and copied on the server."""
    host = incremental_host(fleet)
    media = host.data / "media.bin"
    media.write_bytes(os.urandom(first))
    run_client(host)
    assert pull(fleet)["rc"] == 0
    with open(media, "ab") as handle:
        handle.write(os.urandom(added))
    side = run_client(host)
    assert side["archive"]["kind"] == "delta"
    assert added < side["archive"]["sent_bytes"] < added + 200_000, side["archive"]
    pulled = pull(fleet)
    assert pulled["rc"] == 0, pulled["log"]
    assert pulled["host"]["delta"] is True
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "r") == snapshot(host.data)


def edit_keeping_size_and_mtime(fleet: Fleet, host: FleetHost) -> Path:
    """Day one pulled; then a note rewritten with bytes of the same length and its old
    mtime (as ``cp -p`` or ``rsync -a`` leave it), and the client run again. Returns it."""
    run_client(host)
    assert pull(fleet)["rc"] == 0
    note = host.data / "docs" / "d0" / "note0.txt"
    before = note.stat()
    note.write_text(note.read_text().replace("note 0", "NOTE 0", 1))
    os.utime(note, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (note.stat().st_size, note.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    run_client(host)
    return note


@pytest.mark.parametrize("enabled", [True, False], ids=["delta", "full"])
def test_an_edit_that_keeps_size_and_mtime_is_stored(fleet, tmp_path, enabled):
    """``cp -p``, ``rsync -a`` or a deploy tool can rewrite a file with bytes of the same
    length and keep its mtime: the client sees the new ctime, staging gets the new bytes
    with the old size and mtime, and restic must read them (restic 0.14 checks no ctime
    under ``--ignore-inode``, and stored the old bytes: a newcomer's walkthrough)."""
    host = incremental_host(fleet, enabled=enabled)
    edit_keeping_size_and_mtime(fleet, host)
    day2 = pull(fleet)
    assert day2["rc"] == 0, day2["log"]
    tree = restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "restored")
    assert tree == snapshot(host.data)


def test_the_first_pull_after_the_upgrade_reads_every_file_and_heals_a_stale_snapshot(
    fleet, tmp_path, monkeypatch
):
    """An older pullback stored such an edit's old bytes, and restic's parent kept them
    (it records the file's new ctime with the old bytes): a store over a parent without
    the ``pullback-ctime`` tag reads every file (``--force``), then trusts the parent
    again. The mark is the repository's, so a downgrade or an older copy is caught too."""
    host = incremental_host(fleet)
    note = edit_keeping_size_and_mtime(fleet, host)
    # the older pullback's store, in this process (its host processes fork from it)
    newer = restic_backend.backup_args

    def older(host_name, spec, extra=()):
        args = newer(host_name, spec, extra)
        at = args.index(restic_backend.CTIME_TAG)
        return [*args[: at - 1], *args[at + 1 : -1], "--ignore-inode", "."]

    monkeypatch.setattr(restic_backend, "backup_args", older)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert server_cli.main(["--config", str(fleet.config), "pull", "--host", "web1"]) == 0
    monkeypatch.undo()
    tags = fleet.snapshots("web1")[-1]["tags"]
    assert "pullback" in tags and restic_backend.CTIME_TAG not in tags, tags
    key = os.fsencode(note.relative_to(host.data))
    stale = restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "stale", proven=False)
    assert stale[key] != snapshot(host.data)[key], "the older pullback's defect is not here"

    run_client(host)
    healed = pull(fleet)
    assert healed["rc"] == 0, healed["log"]
    assert "every file of staging is read again" in healed["log"]
    assert restored(fleet, snapshot_ids(fleet)[-1], tmp_path / "healed") == snapshot(host.data)
    run_client(host)
    quiet = pull(fleet)
    assert quiet["rc"] == 0 and "read again" not in quiet["log"]
