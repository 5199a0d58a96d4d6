"""helper-159's attack: borg with (lean) deltas over many days, restored and compared.

Each day changes the client's tree (DayTree's changes plus FIFOs, set-id bits, odd and
long names, sparse holes made and filled, empty dirs), runs the client, pulls into a
*borg* repository (a restic control runs the same script), then restores the day's
snapshot twice (``pullback-server restore`` and plain ``borg extract``) and compares it
with the live client tree using ``rsync -aHAXn --checksum --itemize-changes
--numeric-ids`` and GNU tar's ``--compare`` as oracles, and with tests.helpers' canonical
snapshot. Faults between days: lost staging (with and without its index), a lost client
file cache, a cut transfer, a missing base.
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
from hypothesis import settings

import tests.helpers.days as days_module
from tests.helpers.days import HOST, IMAGE, DaysBed, canonical, differences
from tests.helpers.tree import snapshot
from tests.integration import test_incremental_days as days_test

pytestmark = pytest.mark.integration

BORG_WRAPPER = """#!/bin/bash
# borg, with --list --filter=AME added to create and its list kept apart (helper-159)
if [ "$1" = create ]; then
    shift
    echo "=== create $(date +%s.%N)" >> "$H159_BORG_LOG"
    exec /usr/bin/borg create --list --filter=AME "$@" 2> >(tee -a "$H159_BORG_LOG" >&2)
fi
exec /usr/bin/borg "$@"
"""


class Bed(DaysBed):
    """DaysBed with a backend of choice, and borg's create listing kept."""

    def __init__(self, root: Path, seed: int, backend: str, ratio: float | None = 10):
        original = days_module.Fleet
        days_module.Fleet = lambda where: original(where, backend=backend)
        try:
            super().__init__(root, seed)
        finally:
            days_module.Fleet = original
        self.backend = backend
        self.host.client.write_config(  # deltas all the way (missing_base needs one)
            incremental={"enabled": True, "cache_dir": str(self.cache_dir), "full_ratio": 10}
        )
        self.borg_log = root / "borg-create.log"
        bindir = root / "bin"
        bindir.mkdir()
        (bindir / "borg").write_text(BORG_WRAPPER)
        (bindir / "borg").chmod(0o755)
        self.env = {"PATH": f"{bindir}:{os.environ['PATH']}", "H159_BORG_LOG": str(self.borg_log)}
        self.problems: list[str] = []

    def pull(self, *args: str):
        result = self.fleet.server("pull", "--host", HOST, *args, env=self.env)
        return days_module.Pulled(result.returncode, result.stderr, self.pull_status())

    def run_client_failing(self) -> dict:
        """run_client, a failed service allowed (exit 1)."""
        before = set(self.host.client.published())
        result = self.host.client.cli("run")
        assert result.returncode in (0, 1), result.stderr
        (new,) = set(self.host.client.published()) - before
        side = self.host.client.sidecar(new)
        self.days[side["stamp"]] = days_module.Day(
            len(self.days) + 1,
            side["archive"]["name"],
            side["stamp"],
            side["archive"].get("kind", "full"),
            canonical(snapshot(self.host.data)),
        )
        return side

    def creates(self) -> list[list[str]]:
        """The files borg read (A/M/E records, "A path") per borg create, oldest first
        (pullback runs it with --log-json: a record a line)."""
        if not self.borg_log.exists():
            return []
        runs: list[list[str]] = []
        for line in self.borg_log.read_text(errors="replace").splitlines():
            if line.startswith("=== create"):
                runs.append([])
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if runs and record.get("type") == "file_status" and record["status"] in "AME":
                runs[-1].append(f"{record['status']} {record['path']}")
        return runs

    # -- restores -------------------------------------------------------------------------

    def restored_tree(self, snapshot_id: str) -> dict:
        """(DaysBed's, for the state machine) borg extract, manifest checked."""
        if self.backend != "borg":
            return super().restored_tree(snapshot_id)
        target = self.restore_oracle(snapshot_id, self.root / "restore")
        try:
            check = subprocess.run(
                ["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"],
                cwd=target,
                capture_output=True,
                text=True,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            return canonical(snapshot(self.data_in(target)))
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def data_in(self, restored: Path) -> Path:
        return restored / "services/app/files" / str(self.host.data).lstrip("/")

    def restore_server(self, snapshot_id: str, target: Path) -> Path:
        shutil.rmtree(target, ignore_errors=True)
        done = self.fleet.server(
            "restore", HOST, "--snapshot", snapshot_id, "--target", str(target), env=self.env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return target

    def restore_oracle(self, snapshot_id: str, target: Path) -> Path:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        env = self.fleet.repo_env(HOST)
        if self.backend == "borg":
            argv = ["borg", "extract", "--sparse", f"::{snapshot_id}"]
            subprocess.run(argv, env=env, cwd=target, capture_output=True, check=True)
            return target
        argv = ["restic", "restore", snapshot_id, "--target", str(target)]
        subprocess.run(argv, env=env, capture_output=True, check=True)
        (manifest,) = list(target.rglob("MANIFEST.sha256"))
        return manifest.parent

    def compare(self, label: str, restored: Path, stamp: str, live: bool) -> None:
        """Record every difference between ``restored`` (a restored snapshot's root) and
        the day's tree (and the live client tree when it is still that day's)."""
        check = subprocess.run(
            ["sha256sum", "--check", "--strict", "--quiet", "MANIFEST.sha256"],
            cwd=restored,
            capture_output=True,
            text=True,
        )
        if check.returncode:
            self.problems.append(f"{label}: manifest: {(check.stdout + check.stderr)[:600]}")
        data = self.data_in(restored)
        diff = differences(self.days[stamp].tree, canonical(snapshot(data)))
        if diff:
            self.problems.append(f"{label}: canonical: " + "\n  ".join(diff))
        if not live:
            return
        argv = ["rsync", "-aHAXn", "--numeric-ids", "--checksum", "--itemize-changes", "--delete"]
        out = subprocess.run(
            [*argv, f"{self.host.data}/", f"{data}/"], capture_output=True, check=False
        )
        lines = [x for x in os.fsdecode(out.stdout).splitlines() if x.strip()]
        if out.returncode or lines:
            self.problems.append(f"{label}: rsync rc {out.returncode}: " + "\n  ".join(lines[:15]))
        tarball = self.root / "oracle.tar"
        subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "-C",
                str(self.host.data),
                "-cf",
                str(tarball),
                ".",
            ],
            check=True,
            capture_output=True,
        )
        out = subprocess.run(
            [
                "tar",
                "--numeric-owner",
                "--xattrs",
                "--xattrs-include=*",
                "--acls",
                "-C",
                str(data),
                "--compare",
                "-f",
                str(tarball),
            ],
            capture_output=True,
            check=False,
        )
        tarball.unlink()
        if out.returncode:
            text = os.fsdecode(out.stdout + out.stderr)
            self.problems.append(f"{label}: tar --compare: {text[:800]}")
        # sparse files: the restore keeps at most ~ the client's allocation + borg's slack
        for path in (self.host.data / IMAGE, self.host.data / "sparse/holey.img"):
            if not path.exists():
                continue
            there = data / path.relative_to(self.host.data)
            if there.exists() and there.stat().st_blocks > 4 * path.stat().st_blocks + 8192:
                self.problems.append(
                    f"{label}: {path.name} allocated {there.stat().st_blocks * 512} bytes "
                    f"against the client's {path.stat().st_blocks * 512}"
                )

    def check_day(self, snapshot_id: str, stamp: str, live: bool = True) -> None:
        server = self.restore_server(snapshot_id, self.root / "r-server")
        self.compare(f"[{self.backend} pullback-server restore {stamp}]", server, stamp, live)
        oracle = self.restore_oracle(snapshot_id, self.root / "r-oracle")
        self.compare(f"[{self.backend} oracle extract {stamp}]", oracle, stamp, live)
        shutil.rmtree(self.root / "r-server", ignore_errors=True)
        shutil.rmtree(self.root / "r-oracle", ignore_errors=True)


# -- the extra tree: what DayTree does not make ------------------------------------------------


def odd(data: Path, day: int) -> str:
    """Day ``day``'s changes to the extras (deterministic)."""
    root = os.fsencode(data)
    x = os.path.join(root, b"x")
    if day == 1:
        os.makedirs(x + b"/empty/deeper", exist_ok=True)
        os.mkfifo(x + b"/control.fifo")
        os.chmod(x + b"/control.fifo", 0o620)
        for name, mode in ((b"suid", 0o4755), (b"sgid", 0o2711), (b"both", 0o6750)):
            with open(x + b"/" + name, "wb") as h:
                h.write(b"#!/bin/sh\necho " + name + b"\n")
            os.chmod(x + b"/" + name, mode)
        os.mkdir(x + b"/sgiddir")
        os.chmod(x + b"/sgiddir", 0o2775)
        for name in (
            b"new\nline",
            b"bad-\xff\xfe-utf8",
            b"-leading-dash",
            b"--rf",
            b"*star?[x]\\",
            b" lead space",
            b"trail space ",
            b"tab\there",
        ):
            with open(x + b"/" + name, "wb") as h:
                h.write(b"odd " + name + b"\n")
        os.mkdir(x + b"/dir-\xff\n")
        with open(x + b"/dir-\xff\n/inside", "wb") as h:
            h.write(b"in a bad dir\n")
        deep = x + b"/" + b"/".join([b"d" * 200] * 12)
        os.makedirs(deep)
        with open(deep + b"/" + b"L" * 255, "wb") as h:
            h.write(b"long path\n")
        with open(x + b"/" + b"n" * 255, "wb") as h:
            h.write(b"long name\n")
        os.makedirs(os.path.join(root, b"sparse"))
        with open(os.path.join(root, b"sparse/holey.img"), "wb") as h:
            h.truncate(24 << 20)
            h.seek(5 << 20)
            h.write(os.urandom(64 << 10))
            h.seek(17 << 20)
            h.write(b"z" * 8192)
        # a hard-link group of three names in three directories
        with open(x + b"/hl-a", "wb") as h:
            h.write(b"linked three times\n" * 100)
        os.makedirs(x + b"/hl-dir")
        os.link(x + b"/hl-a", x + b"/hl-dir/hl-b")
        os.link(x + b"/hl-a", x + b"/empty/hl-c")
        os.setxattr(x + b"/hl-a", "user.group", b"three")
        # two files of one size and one mtime, swapped by renames on day 5
        for name, fill in ((b"swap-a", b"A"), (b"swap-b", b"B")):
            with open(x + b"/" + name, "wb") as h:
                h.write(fill * 5000)
            os.utime(x + b"/" + name, ns=(1_300_000_000 * 10**9,) * 2)
        with open(x + b"/allhole.img", "wb") as h:  # nothing but a hole
            h.truncate(10 << 20)
        os.symlink(b"target-of-link", x + b"/xattr-link")
        if os.geteuid() == 0:
            os.setxattr(x + b"/swap-a", "trusted.pullback", b"trusted value")
            os.setxattr(
                x + b"/xattr-link", "trusted.onlink", b"on a symlink", follow_symlinks=False
            )
            subprocess.run(["setcap", "cap_net_raw+ep", os.fsdecode(x + b"/sgid")], check=True)
            os.chown(x + b"/swap-b", 3_000_000_000, 4_000_000_000)  # past 2**31
            os.chown(x + b"/suid", 1, 1)  # a uid the server's passwd names (daemon)
            os.chown(x + b"/both", 4242, 4343)  # one it does not name
        return "extras made"
    if day == 2:
        with open(os.path.join(root, b"sparse/holey.img"), "r+b") as h:  # fill a hole
            h.seek(11 << 20)
            h.write(os.urandom(128 << 10))
        fd = os.open(os.path.join(root, b"sparse/holey.img"), os.O_RDWR)
        try:
            from pullback.common.fsutil import make_hole

            make_hole(fd, 5 << 20, 64 << 10)  # punch the data of day 1
        finally:
            os.close(fd)
        os.chmod(x + b"/suid", 0o755)  # set-uid bit dropped
        os.chmod(x + b"/sgid", 0o6711)  # set-uid added
        os.unlink(x + b"/hl-dir/hl-b")  # a hard link broken ...
        with open(x + b"/hl-dir/hl-b", "wb") as h:
            h.write(b"linked three times\n" * 100)  # ... same bytes, own file
        os.rename(x + b"/new\nline", x + b"/new\nline\nrenamed")
        os.rename(x + b"/dir-\xff\n", x + b"/dir2-\xfe")
        os.unlink(x + b"/control.fifo")
        os.mkdir(x + b"/control.fifo")  # a FIFO replaced by a directory
        os.mkfifo(x + b"/empty/deeper/fifo2")
        return "extras: holes filled and punched, set-id bits, link broken, renames, FIFO->dir"
    if day == 3:
        with open(x + b"/--rf", "ab") as h:
            h.write(b"appended\n")
        os.link(x + b"/hl-dir/hl-b", x + b"/hl-dir/hl-b2")  # a new link
        os.setxattr(x + b"/hl-dir/hl-b2", "user.new", b"v" * 200)
        os.truncate(os.path.join(root, b"sparse/holey.img"), 30 << 20)  # grown by a hole
        os.rmdir(x + b"/empty/deeper") if not os.listdir(x + b"/empty/deeper") else None
        return "extras: append, link made, xattr, grown by a hole"
    if day == 4:
        # same size, same mtime, other bytes (cp -p style) on the odd-named file
        path = x + b"/-leading-dash"
        before = os.lstat(path)
        with open(path, "r+b") as h:
            h.write(b"ODD")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.rename(x + b"/hl-a", x + b"/hl-a.moved")
        os.setxattr(x + b"/xattr-link", "trusted.onlink", b"changed", follow_symlinks=False)
        return "extras: same-size same-mtime rewrite, link renamed"
    if day == 5:
        os.rename(x + b"/swap-a", x + b"/swap-tmp")
        os.rename(x + b"/swap-b", x + b"/swap-a")
        os.rename(x + b"/swap-tmp", x + b"/swap-b")
        with open(x + b"/allhole.img", "r+b") as h:  # the hole partly filled
            h.seek(3 << 20)
            h.write(b"filled" * 1000)
    # later days: small churn
    with open(x + b"/churn-%d" % day, "wb") as h:
        h.write(b"day %d\n" % day)
    os.chmod(x + b"/sgiddir", 0o2770 if day % 2 else 0o2775)
    return f"extras: churn {day}"


SCRIPT = [
    # (day's DayTree changes, fault)
    ([], None),
    (
        [
            ("append", 5, 6),
            ("insert", 7, 8),
            ("overwrite", 1, 2),
            ("add", 3, 4),
            ("delete", 9, 1),
            ("rename_file", 2, 3),
            ("chmod", 4, 5),
            ("chown", 6, 7),
            ("xattr", 8, 9),
            ("acl", 10, 11),
            ("hardlink", 12, 13),
            ("retarget", 14, 15),
            ("image", 16, 17),
            ("image", 17, 1),
        ],
        None,
    ),
    (
        [
            ("truncate", 3, 99),
            ("file_to_dir", 5, 5),
            ("break_link", 0, 1),
            ("image", 18, 2),
            ("rename_dir", 2, 9),
            ("mtime", 3, 4),
            ("grow", 1, 77),
        ],
        None,
    ),
    ([("append", 1, 1), ("dir_to_file", 4, 4), ("acl", 3, 3), ("xattr", 1, 3)], "staging_lost"),
    ([("insert", 9, 9), ("chown", 2, 2), ("add", 1, 1)], "cache_lost"),
    ([("append", 2, 2), ("retarget", 1, 2), ("image", 5, 0)], "cut"),
    ([("overwrite", 3, 3), ("delete", 2, 2), ("hardlink", 5, 6)], "staging_lost_keep_index"),
    ([("chmod", 7, 7)], "missing_base"),
    ([("add", 8, 8), ("image", 9, 1)], None),
    ([("truncate", 1, 5), ("rename_file", 6, 6), ("image", 2, 3)], None),
]


def run_days(root: Path, backend: str, seed: int = 159) -> Bed:
    bed = Bed(root, seed, backend)
    story: list[str] = []
    try:
        for number, (changes, fault) in enumerate(SCRIPT, 1):
            for kind, a, b in changes:
                story.append(bed.tree.change(kind, a, b))
            story.append(odd(bed.host.data, number))
            time.sleep(1.05)  # stamps are seconds
            if fault == "cache_lost":
                (bed.cache_dir / "files.db").unlink()
            side = bed.run_client()
            info = side["archive"]
            story.append(
                f"day {number}: {info['kind']} (format={side.get('format')}) fault={fault}"
            )
            if fault == "staging_lost":
                shutil.rmtree(bed.staging)
                bed.staging_index.unlink()
            if fault == "staging_lost_keep_index":
                shutil.rmtree(bed.staging)
            if fault == "cut":
                bed.cut_next_transfer(info["name"], max(1, info["size"] // 2))
                failed = bed.pull()
                assert failed.rc == 1, failed.log
            if fault == "missing_base" and info["kind"] != "delta":
                story.append("missing_base: the day was a full, no base to lose")
            if fault == "missing_base" and info["kind"] == "delta":
                shutil.rmtree(bed.staging)
                bed.staging_index.unlink()
                base = bed.archives / info["base"]["name"]
                base.unlink()
                base.with_name(base.name + ".json").unlink()
                failed = bed.pull()
                assert failed.rc == 1 and "nothing was stored" in failed.status["reason"]
                assert bed.want_full.exists()
                # the client's next run is a full (the day again, as a new run)
                time.sleep(1.05)
                side = bed.run_client()
                info = side["archive"]
                assert info["kind"] == "full", info
                story.append(f"day {number} again: {info['kind']}")
            pulled = bed.pull()
            status = pulled.status
            story.append(
                f"pull: {status['last_result']} applied={status.get('archives_applied')}"
                f" fell_back={status.get('fell_back')} {status['reason']}"
            )
            assert pulled.rc == 0, "\n".join(story) + "\n" + pulled.log[-3000:]
            assert status["last_result"] == "stored", status["reason"]
            snapshot_id = status["snapshot_id"]
            bed.stored[snapshot_id] = side["stamp"]
            bed.check_day(snapshot_id, side["stamp"], live=True)
        # every stored snapshot again, at the end, against its own day
        for snapshot_id, stamp in bed.stored.items():
            bed.check_day(snapshot_id, stamp, live=False)
        bed.story = story
        return bed
    except BaseException:
        bed.stop()
        raise


@pytest.fixture(scope="module")
def borg_days(tmp_path_factory):
    bed = run_days(tmp_path_factory.mktemp("borg"), "borg")
    yield bed
    bed.stop()


RESTIC_CONTROL = os.environ.get("PULLBACK_H159_RESTIC") == "1"
"""Run the same script on restic too (about 75 s more): test_incremental_days proves
restic's days in CI; this control compares the two backends."""


@pytest.fixture(scope="module")
def restic_days(tmp_path_factory):
    if not RESTIC_CONTROL:
        pytest.skip("the restic control runs with PULLBACK_H159_RESTIC=1")
    bed = run_days(tmp_path_factory.mktemp("restic"), "restic")
    yield bed
    bed.stop()


def _only(problems: list[str], *words: str, without: tuple[str, ...] = ()) -> list[str]:
    return [p for p in problems if all(w in p for w in words) and not any(w in p for w in without)]


def test_borg_every_day_restores_exactly_with_pullback_restore(borg_days):
    """docs/restore.md: the restored tree compared with rsync -aHAXn --checksum lists
    nothing; every stored borg archive restores to its day (pullback-server restore)."""
    found = _only(
        borg_days.problems, "pullback-server restore", without=("allocated", "xattr-link")
    )
    assert not found, "\n".join(found) + "\n" + "\n".join(borg_days.story)


def test_borg_every_day_restores_exactly_with_borg_extract(borg_days):
    found = _only(borg_days.problems, "oracle extract", without=("allocated", "xattr-link"))
    assert not found, "\n".join(found) + "\n" + "\n".join(borg_days.story)


def test_restic_control_every_day_restores_exactly(restic_days):
    found = _only(restic_days.problems, "", without=("allocated", "xattr-link"))
    assert not found, "\n".join(found) + "\n" + "\n".join(restic_days.story)


def test_symlink_xattrs_survive_the_days(borg_days):
    """docs/client.md (files): "Kept: ... symlinks (never followed), ... extended
    attributes"; a ``trusted.*`` (or an SELinux ``security.selinux``) attribute of a
    symlink is one. Found: the client never read a symlink's attributes (writer.py
    ``_add_one``: no ``_read_xattrs`` for SYMTYPE), silently. (restic 0.14 stores none of
    a symlink's: docs/restore.md says so; borg keeps them.)"""
    found = _only(borg_days.problems, "xattr-link")
    assert not found, "\n".join(found[:4])


def test_borg_next_day_reads_only_what_changed(borg_days):
    """docs/server.md: "Files whose content and metadata did not change are not touched
    (not even their ctime), so restic and borg re-read only what changed"."""
    runs = borg_days.creates()
    assert len(runs) == len(SCRIPT), len(runs)
    counts = [len(r) for r in runs]
    print("borg create: files read per day:", counts)
    # day 2 and 3 (plain deltas, no fault): far fewer than the whole tree
    whole = counts[0]
    assert counts[1] < whole / 2 and counts[2] < whole / 2, (counts, runs[1][:40])


def test_borg_repository_checks_after_the_days(borg_days):
    borg_days.fleet.check_repository(HOST)


def test_borg_and_restic_hold_the_same(borg_days, restic_days):
    """The same script on both backends: neither shows a difference the other lacks."""

    def kinds(bed):  # (restic 0.14 stores no symlink's extended attributes: documented)
        return sorted(
            {
                p.split("]", 1)[1].split(":", 2)[1]
                for p in bed.problems
                if "allocated" not in p and "xattr-link" not in p
            }
        )

    assert kinds(borg_days) == kinds(restic_days), (borg_days.problems, restic_days.problems)


# -- owners by name: a restore on another machine (a new server, the client) ------------------

SWAP = """#!/bin/sh
# run "$@" in a private mount namespace whose /etc/passwd and /etc/group say daemon is
# uid/gid 2 and bin is 1 (another machine's numbering); the real files are not written
set -e
dir=$(mktemp -d)
sed -e 's/^daemon:x:1:1:/daemon:x:TWO:TWO:/' -e 's/^bin:x:2:2:/bin:x:1:1:/' \\
    -e 's/TWO/2/g' /etc/passwd > "$dir/passwd"
sed -e 's/^daemon:x:1:/daemon:x:TWO:/' -e 's/^bin:x:2:/bin:x:1:/' -e 's/TWO/2/' \\
    /etc/group > "$dir/group"
exec unshare -m --propagation private sh -c '
    mount --bind "$0/passwd" /etc/passwd && mount --bind "$0/group" /etc/group || exit 97
    "$@"; rc=$?
    umount /etc/group; umount /etc/passwd
    exit $rc' "$dir" "$@"
"""

FAKE_SSH = """#!/bin/sh
# rsync's remote shell: "the client" is this machine, its receiver in another namespace
shift  # the host
exec sh -c "$*"
"""


def _owned_fleet(tmp_path: Path, backend: str):
    from tests.helpers.fleet import Fleet

    fleet = Fleet(tmp_path / "fleet", backend=backend)
    host = fleet.add_host(HOST)
    owned = host.data / "owned-by-daemon"
    owned.write_text("uid 1 on the client\n")
    os.chown(owned, 1, 1)  # named daemon on this server
    acl_file = host.data / "acl-names-daemon"
    acl_file.write_text("an ACL entry for uid 1 and gid 1\n")
    subprocess.run(["setfacl", "-m", "u:1:r--,g:1:rw-", str(acl_file)], check=True)
    other = host.data / "owned-by-4242"
    other.write_text("no name anywhere\n")
    os.chown(other, 4242, 4343)
    host.make_archive()
    pulled = fleet.server("pull", "--host", HOST)
    assert pulled.returncode == 0, pulled.stderr
    swap = tmp_path / "swap.sh"
    swap.write_text(SWAP)
    swap.chmod(0o755)
    probe = subprocess.run([str(swap), "id", "-u", "daemon"], capture_output=True, text=True)
    if probe.returncode or probe.stdout.strip() != "2":
        pytest.skip(f"no private mount namespace here: {probe.stderr}")
    return fleet, host, swap


def _owners(tree: Path, host) -> dict[str, tuple[int, int]]:
    data = tree / "services/app/files" / str(host.data).lstrip("/")
    return {
        n: (os.lstat(data / n).st_uid, os.lstat(data / n).st_gid)
        for n in ("owned-by-daemon", "owned-by-4242")
    }


def _acl(tree: Path, host) -> list[str]:
    data = tree / "services/app/files" / str(host.data).lstrip("/")
    out = subprocess.run(
        ["getfacl", "-n", "-c", str(data / "acl-names-daemon")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(
        x for x in out.splitlines() if x.startswith(("user:", "group:")) and "::" not in x
    )


@pytest.mark.parametrize("backend", ["borg", "restic"])
def test_restore_on_a_new_server_keeps_numeric_owners(tmp_path, backend):
    """docs/restore.md: kept: "content, owners (numeric)"; docs/disaster-recovery.md: a
    new server restores from the copies. On a machine whose passwd numbers its users
    otherwise, ``pullback-server restore`` must still give uid 1 back (restic does; borg
    1.2 extracts by user name unless given --numeric-ids)."""
    fleet, host, swap = _owned_fleet(tmp_path, backend)
    try:
        target = tmp_path / "restored"
        done = subprocess.run(
            [
                str(swap),
                sys.executable,
                "-m",
                "pullback.server.cli",
                "--config",
                str(fleet.config),
                "restore",
                HOST,
                "--target",
                str(target),
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        found = (_owners(target, host), _acl(target, host))
        assert found == (
            {"owned-by-daemon": (1, 1), "owned-by-4242": (4242, 4343)},
            ["group:1:rw-", "user:1:r--"],
        )
    finally:
        fleet.stop()


@pytest.mark.parametrize("backend", ["borg", "restic"])
def test_printed_rsync_line_keeps_numeric_owners(tmp_path, backend):
    """docs/restore.md: ``restore`` prints the rsync line that copies the tree to the
    client; the client numbers its users otherwise than the server (here: its receiver
    runs with another passwd). uid 1 on the client must stay uid 1 (kept: "owners
    (numeric)"), not become the uid the client gives the *server's* name for uid 1."""
    fleet, host, swap = _owned_fleet(tmp_path, backend)
    try:
        target = tmp_path / "restored"
        done = fleet.server("restore", HOST, "--service", "app", "--target", str(target))
        assert done.returncode == 0, done.stdout + done.stderr
        words = done.stdout + done.stderr
        lines = [x[x.index("rsync -aHAX") :] for x in words.splitlines() if "rsync -aHAX" in x]
        assert len(lines) == 1, words
        line = lines[0]
        assert "root@" in line and ":/var/tmp/pullback-restore/" in line, line
        fake = tmp_path / "fakessh"
        fake.write_text(FAKE_SSH)
        fake.chmod(0o755)
        client_side = tmp_path / "on-the-client"
        import shlex

        argv = shlex.split(line)
        if "-e" in argv:  # our own remote shell instead of ssh -p PORT
            at = argv.index("-e")
            del argv[at : at + 2]
        argv[-1] = f"x:{client_side}/"
        argv[1:1] = ["-e", str(fake), f"--rsync-path={swap} rsync"]
        ran = subprocess.run(argv, capture_output=True, text=True)
        assert ran.returncode == 0, (argv, ran.stderr)
        found = (_owners(client_side, host), _acl(client_side, host))
        assert found == (
            {"owned-by-daemon": (1, 1), "owned-by-4242": (4242, 4343)},
            ["group:1:rw-", "user:1:r--"],
        ), line
    finally:
        fleet.stop()


def test_borg_day_put_back_by_the_client_restore_is_the_day(borg_days, tmp_path):
    """docs/restore.md §2: the snapshot fetched from borg, put back with
    ``pullback-client restore --service app --from DIR --task files --target T``: T holds
    the client's tree as it was (rsync -aHAXn --checksum --numeric-ids lists nothing)."""
    bed = borg_days
    fetched = bed.restore_server(bed.pull_status()["snapshot_id"], tmp_path / "fetched")
    target = tmp_path / "put-back"
    target.mkdir()
    done = bed.host.client.cli(
        "restore",
        "--service",
        "app",
        "--from",
        str(fetched),
        "--task",
        "files",
        "--target",
        str(target),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    there = target / str(bed.host.data).lstrip("/")
    argv = ["rsync", "-aHAXn", "--numeric-ids", "--checksum", "--itemize-changes", "--delete"]
    out = subprocess.run([*argv, f"{bed.host.data}/", f"{there}/"], capture_output=True)
    lines = [x for x in os.fsdecode(out.stdout).splitlines() if x.strip()]
    lines = [x for x in lines if "xattr-link" not in x]  # (F3: its own test)
    assert out.returncode == 0 and not lines, "\n".join(lines[:30]) + os.fsdecode(out.stderr)


def test_borg_drill_proves_every_day(borg_days):
    """docs/restore.md "The server proves it first": the restore drill of each stored
    borg archive (made from lean deltas, fallbacks and fulls) passes."""
    bed = borg_days
    failed = []
    for snapshot_id in bed.stored:
        done = bed.fleet.server("verify", "--host", HOST, "--snapshot", snapshot_id)
        if done.returncode:
            failed.append(f"{snapshot_id}: {done.stderr[-600:]}")
    assert not failed, "\n".join(failed)


# -- the randomized days machine, on borg -------------------------------------------------------


BORG_EXAMPLES = int(os.environ.get("PULLBACK_DAYS_EXAMPLES", "1"))
"""One example in CI (the scripted days above cover every kind on borg); the days
machine's own variables run it long."""
BORG_DAYS_SETTINGS = settings(
    days_test.SETTINGS,
    max_examples=2 * BORG_EXAMPLES + 1 if days_test.PAIRED else BORG_EXAMPLES,
)


class BorgIncrementalDays(days_test.IncrementalDays):
    """test_incremental_days's machine (every rule, every fault), its repository borg's."""

    def first_day(self):
        self.bed = Bed(self.root, self.tree_seed, "borg", ratio=None)
        side = self.run([])
        assert side["archive"]["kind"] == "full"
        self.pull_day(side)

    def every_snapshot_restores(self):
        assert self.bed is not None
        found = {s["name"] for s in self.bed.snapshots()}
        assert found == set(self.bed.stored)
        for snapshot_id, stamp in self.bed.stored.items():
            self.bed.check_snapshot(snapshot_id, stamp)


def test_borg_randomized_days_restore_to_their_day():
    """The days machine (restic only until now) with borg: every stored archive extracts
    to exactly its day (PULLBACK_DAYS_SEED / _EXAMPLES / _STEPS as there)."""
    days_test.run_days(BorgIncrementalDays, BORG_DAYS_SETTINGS)


@pytest.mark.parametrize("backend", ["borg"])
def test_printed_rsync_line_keeps_holes(tmp_path, backend):
    """docs/restore.md: sparse files "come back as holes"; the printed rsync line (no
    --sparse) writes every hole of the fetched tree as zeros into the client's
    /var/tmp/pullback-restore: a 64 MiB file holding 8 KiB takes 64 MiB there (a VM image
    of 100 GiB with 10 GiB of data would take 100 GiB of the client's disk)."""
    from tests.helpers.fleet import Fleet

    fleet = Fleet(tmp_path / "fleet", backend=backend)
    try:
        host = fleet.add_host(HOST)
        with open(host.data / "disk.img", "wb") as h:
            h.truncate(64 << 20)
            h.seek(10 << 20)
            h.write(b"d" * 8192)
        host.make_archive()
        assert fleet.server("pull", "--host", HOST).returncode == 0
        target = tmp_path / "restored"
        done = fleet.server("restore", HOST, "--service", "app", "--target", str(target))
        assert done.returncode == 0, done.stderr
        import shlex

        words = done.stdout + done.stderr
        (line,) = [x[x.index("rsync -aHAX") :] for x in words.splitlines() if "rsync -aHAX" in x]
        argv = shlex.split(line)
        if "-e" in argv:
            at = argv.index("-e")
            del argv[at : at + 2]
        client_side = tmp_path / "on-the-client"
        argv[-1] = str(client_side) + "/"  # a local copy: the same rsync options
        ran = subprocess.run(argv, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        rel = "services/app/files" + str(host.data) + "/disk.img"
        fetched = (target / rel).stat().st_blocks * 512
        copied = (client_side / rel).stat().st_blocks * 512
        assert copied <= max(fetched, 1 << 20), (line, fetched, copied)
    finally:
        fleet.stop()


def test_borg_a_failed_service_day_between_deltas(tmp_path):
    """A second service fails on the client on day 2 (its command task), succeeds on day 3:
    each day's borg archive restores to that day for both services, day 2 is partial, and
    ``restore --service db`` of the newest restores day 3's db tree; no pull falls back."""
    bed = Bed(tmp_path, 7, "borg")
    try:
        db = tmp_path / "dbdata"
        db.mkdir()
        for i in range(20):
            (db / f"table{i}.dat").write_bytes(os.urandom(3000 + i))
        flag = tmp_path / "fail-db"
        bed.host.client.add_service(
            "db",
            f"service: {{name: db}}\nfiles: {{paths: [{db}]}}\n"
            f'command: {{dump: ["test ! -e {flag}"]}}\n',
        )
        results = []
        for day in (1, 2, 3, 4):
            if day > 1:
                bed.tree.change("append", day, day)
                (db / f"table{day}.dat").write_bytes(os.urandom(5000))
                (db / f"new{day}.dat").write_bytes(b"day %d\n" % day)
            if day == 2:
                flag.touch()
            elif flag.exists():
                flag.unlink()
            time.sleep(1.05)
            side = bed.run_client_failing()
            pulled = bed.pull()
            status = pulled.status
            results.append(
                (
                    day,
                    side["archive"]["kind"],
                    status["last_result"],
                    status.get("fell_back"),
                    status["reason"],
                )
            )
            assert pulled.rc in (0, 1) and status["last_result"] == "stored", results
            bed.check_day(status["snapshot_id"], side["stamp"], live=True)
            fetched = bed.restore_server(status["snapshot_id"], tmp_path / "db-check")
            there = fetched / "services/db/files" / str(db).lstrip("/")
            if day != 2:
                out = subprocess.run(
                    [
                        "rsync",
                        "-aHAXn",
                        "--numeric-ids",
                        "--checksum",
                        "--itemize-changes",
                        "--delete",
                        f"{db}/",
                        f"{there}/",
                    ],
                    capture_output=True,
                )
                lines = [x for x in os.fsdecode(out.stdout).splitlines() if x.strip()]
                if lines:
                    bed.problems.append(f"db day {day}: " + " | ".join(lines[:10]))
        found = [p for p in bed.problems if "xattr-link" not in p and "allocated" not in p]
        assert not found, (found, results)
        assert not any(r[3] for r in results), results  # no fallback
    finally:
        bed.stop()
