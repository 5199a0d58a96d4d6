"""Many days of changes with incremental pulls, and faults between them (issue 18).

A hypothesis state machine drives one client (``incremental: {enabled: true}``) behind a
real sshd and a real server with restic. Every rule is one day: a drawn list of changes
to the client's tree (add, delete, rename a file or a directory, chmod, chown, ``user.*``
xattrs, POSIX ACLs, hard links made and broken, symlinks retargeted, the large text file
appended to and edited in the middle, the binary file overwritten in place and grown, a sparse
image written, its holes filled, punched and grown, truncation,
a file replaced by a directory and back, mtimes set in the past), then the client's run
(the day's tree is recorded by its archive's stamp), then the pull, and perhaps a fault:

- ``missed_day``: no pull; the next pull applies several archives;
- ``day_after_staging_lost``: the server's staging tree (and perhaps its index) is gone:
  the pull still stores, from the chain's full in the same pull;
- ``day_after_client_cache_lost``: ``cache_dir/files.db`` is gone: the archive is a full;
- ``day_with_damaged_archive``: a byte in the middle of the day's archive is flipped:
  the pull fails (checksum) and stores nothing (for a delta it asks for a full), then
  the byte is put back and the next pull replays the day with the one after it;
- ``day_with_archive_damaged_for_good``: the same, never put back: CHECKSUM_TRIES pulls
  fail, the next passes the archive over, and the client's next archive is a full;
- ``day_with_missing_base``: the base of the day's delta is deleted on the client and the
  server's staging and index are lost: the pull fails with a reason and asks for a full,
  and the client's next archive is a full;
- ``day_with_damaged_staging``: a staging file the day's delta takes from its base is
  changed behind the index's back: the pull falls back to the chain's full, reported;
- ``day_with_cut_transfer``: the day's archive stops after half its bytes: the pull
  fails, keeps what arrived, and the next pull resumes it.

The model predicts which archives each pull applies (``archives_applied``) and whether it
falls back. Every snapshot stored is restored right after its pull, its
``MANIFEST.sha256`` checked, and its data tree compared with that day's tree (content,
type, mode, owner, mtime, xattrs, ACLs, symlink targets, hard-link groups); teardown
restores every snapshot of the repository again and finds exactly the days stored.

A short run by default (CI); longer runs by environment variables::

    PULLBACK_DAYS_EXAMPLES=200 PULLBACK_DAYS_STEPS=60 pytest tests/integration/...days.py

``PULLBACK_DAYS_SEED=<n>`` replays a run (a failure names its seed);
``PULLBACK_DAYS_SHRINK=1`` lets hypothesis shrink a failure (slow: minutes per example).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pullback.common.archive.directory import mark_want_full
from pullback.common.archive.sidecar import ARCHIVE_NAME
from pullback.server.host_pull import CHECKSUM_TRIES
from tests.helpers.days import KINDS, DaysBed, Pulled

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("PULLBACK_DAYS_EXAMPLES", "2"))
STEPS = int(os.environ.get("PULLBACK_DAYS_STEPS", "8"))
SEED = int(os.environ.get("PULLBACK_DAYS_SEED") or random.SystemRandom().randrange(1 << 32))
SHRINK = os.environ.get("PULLBACK_DAYS_SHRINK") == "1"

PAIRED = "_min_steps" not in inspect.signature(run_state_machine_as_test).parameters
"""Hypothesis 6.67 (Debian 12): each example it generates early comes with its smallest
extension, an example of no day (which costs nothing here): twice as many examples (and
one) make about EXAMPLES examples with days."""

SETTINGS = settings(
    max_examples=2 * EXAMPLES + 1 if PAIRED else EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        *[getattr(HealthCheck, n) for n in ("function_scoped_fixture",) if hasattr(HealthCheck, n)],
    ],
)

CHANGES = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 1 << 30), st.integers(0, 1 << 30)),
    max_size=8,
)
"""A day's changes: (kind, a, b); a and b choose the targets from the current tree."""
ROOM = st.binary(min_size=256, max_size=256)
"""Drawn and unused: room for the days. Hypothesis 6.67 (Debian 12) runs its first
examples in at most ten times the bytes of the smallest one (no day at all), which would
end an example after a day or two."""


@dataclass
class Expect:
    """What the next pull should do, by the model."""

    plan: list[str] = field(default_factory=list)
    """The archives applied, oldest first (the last is stored)."""
    fell_back: bool = False
    broken: str = ""
    """Why the newest archive cannot be reached (then the pull fails and asks for a
    full archive)."""


RULES_RUN: collections.Counter[str] = collections.Counter()
"""How often each rule ran in this session (printed after the machine's test)."""


def one_day(function):
    """A rule: the machine is healthy (teardown checks every snapshot) only when it ended;
    a failure carries the story of the example so far (hypothesis may not replay it)."""

    @functools.wraps(function)
    def day(self, *args, **kwargs):
        RULES_RUN[function.__name__] += 1
        self.healthy = False
        self.say(f"{function.__name__}{args or ''}{kwargs or ''}")
        try:
            if self.bed is None:
                self.first_day()
            function(self, *args, **kwargs)
        except BaseException as exc:
            exc.add_note("the example so far:\n" + "\n".join(self.story))
            raise
        self.healthy = True

    return day


@seed(SEED)
class IncrementalDays(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pullback-days-"))
        self.bed: DaysBed | None = None
        self.healthy = False
        self.held: str | None = None
        """The archive the server's staging holds (by the model)."""
        self.intact = True
        """Staging still is what its index says (False: the tree lost or changed)."""
        self.newest: str | None = None
        """The client's newest archive."""
        self.must_be_full: str | None = None
        """Why the client's next archive must be a full one."""
        self.refused: set[str] = set()
        """Archives that failed their checksum CHECKSUM_TRIES times since the last store."""
        self.story: list[str] = []
        self.tree_seed = 0

    def say(self, line: str) -> None:
        """Note ``line`` for hypothesis's report, and keep it for a failure's note."""
        note(line)
        self.story.append(line)

    # -- the model ------------------------------------------------------------------------

    def expect(self, newest: str) -> Expect:
        """The archives the server applies to reach ``newest`` (server/chain.py, in the
        model's words): from what staging holds when it is the base of a delta on the way,
        else from the chain's full, which is a fallback when the newest is a delta (staging
        lost, broken, or holding none of its bases); a base missing on the client or
        refused ends the chain."""
        assert self.bed is not None
        sides = self.bed.client_sidecars()
        chain, name, fell_back = [newest], newest, False
        while True:
            base = sides[name]["archive"].get("base")
            if base is None:
                return Expect(chain[::-1], fell_back or (len(chain) > 1 and not self.missed(name)))
            if base["name"] == self.held:
                if self.intact:
                    return Expect(chain[::-1])
                fell_back = True  # staging is not what its index says: from the full
            name = base["name"]
            if name not in sides:
                return Expect(fell_back=fell_back, broken="is not on the client")
            if name in self.refused:
                return Expect(fell_back=fell_back, broken="did not match its checksum")
            chain.append(name)

    def missed(self, full: str) -> bool:
        """Whether the chain's ``full`` archive was made after the tree staging's index
        names (missed days: the server logs it and reports no fallback, nothing was lost;
        both stamps from the archive names, as host_pull._new_chain reads them)."""
        if self.held is None:
            return False
        held, made = ARCHIVE_NAME.fullmatch(self.held), ARCHIVE_NAME.fullmatch(full)
        assert held and made, (self.held, full)
        return made["stamp"] > held["stamp"]

    def up_to_date(self) -> bool:
        """The server stored the client's newest archive and staging still holds it."""
        return self.intact and self.held is not None and self.held == self.newest

    def failed_on_newest(self, expect: Expect, kind: str) -> None:
        """The model after a pull that failed on the newest archive of ``expect`` (its
        checksum, a cut): the archives before it were applied; a delta leaves staging as
        it was, a full empties it."""
        if len(expect.plan) > 1:
            self.held, self.intact = expect.plan[-2], True
        elif kind == "full":
            self.held, self.intact = None, True

    # -- steps ----------------------------------------------------------------------------

    def change(self, changes) -> None:
        assert self.bed is not None
        for kind, a, b in changes:
            self.say(self.bed.tree.change(kind, a, b))

    def run(self, changes) -> dict:
        """The day's changes and the client's run; returns the archive's sidecar."""
        assert self.bed is not None
        self.change(changes)
        side = self.bed.run_client()
        info = side["archive"]
        self.say(f"day {len(self.bed.days)}: {info['kind']} {info['name']} ({info['size']} bytes)")
        if self.must_be_full:
            assert info["kind"] == "full", f"not a full archive, but {self.must_be_full}"
            assert not self.bed.want_full.exists(), "the full request was not used up"
            self.must_be_full = None
        if info["kind"] == "delta":
            assert info["base"]["name"] == self.newest, "a delta not on the newest archive"
        self.newest = info["name"]
        return side

    def pull(self) -> Pulled:
        """The server's pull (its outcome noted for the failure's story)."""
        assert self.bed is not None
        pulled = self.bed.pull()
        status = pulled.status
        applied = status.get("archives_applied") if status["last_result"] == "stored" else "-"
        self.say(f"pull: {status['last_result']} ({applied} applied): {status['reason']}")
        for warning in status["warnings"]:
            self.say(f"  warning: {warning}")
        return pulled

    def pull_day(self, side: dict) -> None:
        """Pull; the day is stored, or (a chain that cannot be applied) the pull fails."""
        assert self.bed is not None
        expect = self.expect(side["archive"]["name"])
        pulled = self.pull()
        if expect.broken:
            self.not_reached(expect, pulled)
        else:
            self.stored(side, expect, pulled)

    def stored(self, side: dict, expect: Expect, pulled: Pulled) -> None:
        """The pull stored the day as the model said; its snapshot restores to the day."""
        assert self.bed is not None
        status = pulled.status
        assert pulled.rc == 0, pulled.log
        assert status["last_result"] == "stored", status["reason"]
        assert status["archive"] == side["archive"]["name"]
        assert status["archives_applied"] == len(expect.plan), (expect, status["reason"])
        assert status["fell_back"] == expect.fell_back, (expect, status["warnings"])
        if expect.fell_back:
            assert any("fell back to a full transfer" in w for w in status["warnings"])
        assert status["delta"] == (side["archive"]["kind"] == "delta")
        kind = "a delta" if status["delta"] else "a full archive"
        assert f"fetched {status['archive']} ({kind}, " in pulled.log, pulled.log
        snapshot_id = status["snapshot_id"]
        assert snapshot_id not in self.bed.stored
        self.bed.stored[snapshot_id] = side["stamp"]
        self.bed.check_snapshot(snapshot_id, side["stamp"])
        self.held, self.intact = side["archive"]["name"], True
        self.refused.clear()  # a store clears the checksum failures (status.json)

    def not_reached(self, expect: Expect, pulled: Pulled) -> None:
        """The pull failed: the newest archive's chain cannot be applied; nothing was
        stored and the server asked for a full archive."""
        assert self.bed is not None
        status = pulled.status
        assert pulled.rc == 1, pulled.log
        assert status["last_result"] == "failed"
        assert expect.broken in status["reason"], (expect, status["reason"])
        assert "nothing was stored" in status["reason"]
        if expect.fell_back:  # a delta tried on the broken staging tree emptied it
            assert any("fell back to a full transfer" in w for w in status["warnings"])
            self.held, self.intact = None, True
        assert self.bed.want_full.exists(), "the server did not ask for a full archive"
        self.must_be_full = "the server asked for a full archive"

    # -- the rules --------------------------------------------------------------------------

    @initialize(tree_seed=st.integers(0, (1 << 32) - 1), room=ROOM)
    def the_tree(self, tree_seed, room):
        self.tree_seed = tree_seed

    def first_day(self):
        """The fleet, the client's tree, and its first day (a full archive), stored; made
        by the example's first rule (an example of no day costs nothing)."""
        self.bed = DaysBed(self.root, self.tree_seed)
        side = self.run([])
        assert side["archive"]["kind"] == "full"
        self.pull_day(side)

    @rule(changes=CHANGES)
    @one_day
    def day(self, changes):
        self.pull_day(self.run(changes))

    @rule(changes=CHANGES)
    @one_day
    def missed_day(self, changes):
        self.run(changes)

    @rule(changes=CHANGES, with_index=st.booleans())
    @one_day
    def day_after_staging_lost(self, changes, with_index):
        assert self.bed is not None
        shutil.rmtree(self.bed.staging, ignore_errors=True)
        if with_index:
            with contextlib.suppress(FileNotFoundError):
                self.bed.staging_index.unlink()
            self.held, self.intact = None, True
        else:
            self.intact = False
        self.pull_day(self.run(changes))

    @rule(changes=CHANGES)
    @one_day
    def day_after_client_cache_lost(self, changes):
        assert self.bed is not None
        (self.bed.cache_dir / "files.db").unlink()
        self.must_be_full = "the client's file cache was lost"
        self.pull_day(self.run(changes))

    @precondition(lambda self: self.intact and not self.refused)
    @rule(changes=CHANGES)
    @one_day
    def day_with_damaged_archive(self, changes):
        """A byte of the day's archive flipped on the client, then put back (a transient
        fault): the pull fails and stores nothing; the next pull takes the day."""
        assert self.bed is not None
        side = self.run(changes)
        info = side["archive"]
        name, middle = info["name"], info["size"] // 2
        expect = self.expect(name)
        self.bed.flip_byte(name, middle)
        pulled = self.pull()
        self.bed.flip_byte(name, middle)
        status = pulled.status
        assert pulled.rc == 1, pulled.log
        assert status["last_result"] == "failed"
        assert "nothing was stored" in status["reason"]
        if info["kind"] == "delta":  # downloaded whole, checked before it is applied
            assert "checksum mismatch" in status["reason"], status["reason"]
            assert status["checksum_failures"].get(name) == 1
            # over SSH that is damage on the client's disk: every later delta would be
            # built on it, so the server asks for a full archive
            assert self.bed.want_full.exists(), "no full archive asked for"
            self.must_be_full = "the server asked for a full archive"
        else:
            self.say(f"a damaged full archive: {status['reason']}")
        self.failed_on_newest(expect, info["kind"])

    @precondition(lambda self: self.up_to_date() and not self.refused)
    @rule(changes=CHANGES)
    @one_day
    def day_with_archive_damaged_for_good(self, changes):
        """A byte of the day's delta flipped on the client for good: CHECKSUM_TRIES pulls
        fail and ask for a full archive, the next passes it over (the day before is
        stored already); the client's next archive is a full."""
        assert self.bed is not None
        side = self.run(changes)
        info = side["archive"]
        if info["kind"] != "delta":  # a damaged full: day_with_damaged_archive
            self.pull_day(side)
            return
        self.bed.flip_byte(info["name"], info["size"] // 2)
        for attempt in range(1, CHECKSUM_TRIES + 1):
            pulled = self.pull()
            status = pulled.status
            assert pulled.rc == 1, pulled.log
            assert "checksum mismatch" in status["reason"], status["reason"]
            assert status["checksum_failures"].get(info["name"]) == attempt
        passed = self.pull()
        status = passed.status
        assert passed.rc == 0, passed.log
        assert status["last_result"] == "skipped", status["reason"]
        assert f"{self.held} is already stored" in status["reason"]
        assert any(w.startswith(f"passing over {info['name']}") for w in status["warnings"])
        assert status["problem"] is True  # the damaged day never reached a snapshot
        self.refused.add(info["name"])
        assert self.bed.want_full.exists(), "no full archive asked for"
        self.must_be_full = "the server asked for a full archive"

    @precondition(lambda self: not self.refused)
    @rule(changes=CHANGES)
    @one_day
    def day_with_missing_base(self, changes):
        """The base of the day's delta deleted on the client, and the server's staging
        and index lost: the pull fails with the reason, and asks for a full archive."""
        assert self.bed is not None
        side = self.run(changes)
        shutil.rmtree(self.bed.staging, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.bed.staging_index.unlink()
        self.held, self.intact = None, True
        info = side["archive"]
        if info["kind"] == "delta":  # (a full has no base to lose)
            base = self.bed.archives / info["base"]["name"]
            base.unlink()
            base.with_name(base.name + ".json").unlink()
            assert self.expect(info["name"]).broken
        self.pull_day(side)

    @precondition(lambda self: self.up_to_date() and not self.refused)
    @rule(changes=CHANGES, which=st.integers(0, 1 << 30))
    @one_day
    def day_with_damaged_staging(self, changes, which):
        """A staging file the day's delta takes from its base changed behind the index's
        back: the pull falls back to the chain's full, and stores the day."""
        assert self.bed is not None
        side = self.run(changes)
        info = side["archive"]
        if info["kind"] == "delta":
            members = self.bed.members(info["name"])
            taken = sorted(b for data, b in members.values() if data in ("base", "same", "delta"))
            if not taken:  # (a lean delta names none of the files it keeps from its base)
                staging = self.bed.staging
                found = (str(p.relative_to(staging)) for p in staging.rglob("*"))
                taken = sorted(
                    name
                    for name in found
                    if name.startswith("services/")
                    and name not in members
                    and (staging / name).is_file()
                    and not (staging / name).is_symlink()
                )
            victim = self.bed.staging / taken[which % len(taken)]
            self.say(f"damaged in staging: {victim}")
            with open(victim, "r+b") as handle:
                first = handle.read(1)
                handle.seek(0)
                handle.write(bytes([first[0] ^ 1]) if first else b"x")
            self.intact = False
        self.pull_day(side)

    @precondition(lambda self: self.intact and not self.refused)
    @rule(changes=CHANGES)
    @one_day
    def day_with_cut_transfer(self, changes):
        """The day's archive stops after half its bytes: the pull fails and keeps them;
        the next pull resumes it and stores the day."""
        assert self.bed is not None
        side = self.run(changes)
        info = side["archive"]
        name, half = info["name"], max(1, info["size"] // 2)
        expect = self.expect(name)
        self.bed.cut_next_transfer(name, half)
        pulled = self.pull()
        assert pulled.rc == 1, pulled.log
        assert not self.bed.cut_file.exists(), "the transfer was not cut"
        assert "the next run resumes" in pulled.status["reason"], pulled.status["reason"]
        assert (self.bed.partial_dir / name).stat().st_size == half
        self.failed_on_newest(expect, info["kind"])
        resumed = self.pull()
        assert f"resuming {name} at" in resumed.log, resumed.log
        self.stored(side, self.expect(name), resumed)

    @invariant()
    def the_server_counts_what_was_stored(self):
        if self.bed is not None and self.bed.stored:
            assert self.bed.pull_status()["snapshots"] == len(self.bed.stored)

    def teardown(self):
        try:
            if self.bed is not None and self.healthy:
                self.every_snapshot_restores()
        finally:
            if self.bed is not None:
                self.bed.stop()
            shutil.rmtree(self.root, ignore_errors=True)

    def every_snapshot_restores(self):
        """The repository holds exactly the days stored, each restoring to its tree."""
        assert self.bed is not None
        found = {s["short_id"]: s for s in self.bed.snapshots()}
        assert set(found) == set(self.bed.stored)
        for snapshot_id, stamp in self.bed.stored.items():
            assert stamp in found[snapshot_id]["tags"]
            self.bed.check_snapshot(snapshot_id, stamp)


def run_days(machine: type[IncrementalDays], chosen: settings = SETTINGS) -> None:
    """Run the days ``machine``; a failure names the seed that replays it, and the rules
    run are printed either way."""
    RULES_RUN.clear()
    try:
        run_state_machine_as_test(machine, settings=chosen)
    except BaseException as exc:
        exc.add_note(f"replay with PULLBACK_DAYS_SEED={SEED}")
        raise
    finally:
        print(f"PULLBACK_DAYS_SEED={SEED}:", ", ".join(f"{k} {v}" for k, v in RULES_RUN.items()))


def test_every_stored_day_restores_to_exactly_that_day():
    run_days(IncrementalDays)


def test_a_damaged_archive_in_the_chain_makes_the_server_ask_for_a_full(tmp_path):
    """A delta damaged on the client's disk: every later delta would be built on it, so
    the server asks for a full archive; after CHECKSUM_TRIES pulls it is passed over
    (the day before is stored); the client's next archive is a full, which heals."""
    bed = DaysBed(tmp_path, 18)
    try:
        bed.run_client()
        assert bed.pull().rc == 0
        bed.tree.change("append", 1, 2)
        damaged = bed.run_client()["archive"]
        assert damaged["kind"] == "delta"
        bed.flip_byte(damaged["name"], damaged["size"] // 2)  # on the client's disk
        for _ in range(CHECKSUM_TRIES):
            failed = bed.pull()
            assert failed.rc == 1 and "checksum mismatch" in failed.status["reason"]
            assert bed.want_full.exists()
        passed = bed.pull()  # passed over: the archive before it is already stored
        assert passed.status["last_result"] == "skipped", passed.status["reason"]
        assert any("passing over" in w for w in passed.status["warnings"])
        assert passed.status["problem"] is True

        bed.tree.change("append", 3, 4)
        after = bed.run_client()["archive"]
        if after["kind"] == "delta":  # the server has not asked for a full yet: it must now
            assert after["base"]["name"] == damaged["name"]
            for _ in range(CHECKSUM_TRIES):
                stuck = bed.pull()
                if bed.want_full.exists():
                    break
            assert bed.want_full.exists(), (
                "every pull fails on the damaged base and no full archive is asked for: "
                + stuck.status["reason"]
            )
            after = bed.run_client()["archive"]
        assert after["kind"] == "full"
        healed = bed.pull()
        assert healed.rc == 0, healed.log
        bed.check_snapshot(healed.status["snapshot_id"], healed.status["stamp"])
    finally:
        bed.stop()


@pytest.mark.parametrize("how", ["copied apart and chmod", "directory replaced by a file"])
def test_a_hard_link_broken_on_the_client_keeps_the_delta(tmp_path, how):
    """One name of a hard-linked file of the base changed (its mode, or gone with its
    directory) while another stays a base member: applying the first changes the shared
    staging inode's ctime, which must not make the second fail its index check (it did:
    the delta and its fallback failed; found by the machine above)."""
    bed = DaysBed(tmp_path, 18)  # etc/app/f00.txt and var/lib/app/f00.hard are one file
    try:
        bed.run_client()
        assert bed.pull().rc == 0
        data = bed.host.data
        first, second = data / "etc/app/f00.txt", data / "var/lib/app/f00.hard"
        if how == "copied apart and chmod":
            shutil.copy2(second, second.with_name("copy"))
            os.rename(second.with_name("copy"), second)  # the link broken, bytes unchanged
            os.chmod(first, 0o600)  # and the first name's mode changed
        else:
            shutil.rmtree(first.parent)  # the first name goes with its directory
            first.parent.write_text("etc/app is a file now\n")
        side = bed.run_client()
        assert side["archive"]["kind"] == "delta"
        member = bed.members(side["archive"]["name"])[f"services/app/files{second}"]
        assert member[0] == "base"
        pulled = bed.pull()
        assert pulled.rc == 0, pulled.status["reason"]
        assert not pulled.status["fell_back"], pulled.status["warnings"]
        bed.check_snapshot(pulled.status["snapshot_id"], side["stamp"])
    finally:
        bed.stop()


def test_a_full_archive_made_on_a_missed_day_is_no_fallback(tmp_path):
    """The client made a full archive on a day the server did not pull (it had asked for
    one), then a delta on it: the next pull applies both, logs missed days and reports no
    fallback (nothing staging held was lost; the machine above met this and its model
    said fallback)."""
    bed = DaysBed(tmp_path, 18)
    try:
        bed.run_client()
        assert bed.pull().rc == 0
        mark_want_full(bed.archives)  # as the serve endpoint leaves it
        bed.tree.change("append", 1, 2)
        full = bed.run_client()["archive"]  # a missed day: not pulled
        assert full["kind"] == "full"
        bed.tree.change("append", 3, 4)
        side = bed.run_client()
        assert side["archive"]["kind"] == "delta"
        assert side["archive"]["base"]["name"] == full["name"]
        pulled = bed.pull()
        status = pulled.status
        assert pulled.rc == 0, pulled.log
        assert status["archives_applied"] == 2, status["reason"]
        assert status["fell_back"] is False, status["warnings"]
        assert not any("fell back" in w for w in status["warnings"]), status["warnings"]
        assert f"missed days: {side['archive']['name']} is a delta on" in pulled.log
        bed.check_snapshot(status["snapshot_id"], side["stamp"])
    finally:
        bed.stop()
