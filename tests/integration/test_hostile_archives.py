"""A corpus of hostile archives: each is refused or neutralised, nothing lands outside staging.

A compromised client controls its archive, the archive's manifest and its sidecar, so
every archive here arrives with a matching sha256. Each case says what the pull must do:
refuse the archive (the host fails with plain words, no snapshot is stored, the partial
download is gone, staging is emptied and no base index is left that could vouch for it)
or neutralise it (a snapshot is stored, staging holds the harmless form and the index
names the archive). After every round: nothing was created outside staging (every escape
target lies in ``OUTSIDE``, which must stay empty) and /etc/passwd is untouched. After
every category: a good archive pulls fine on the first RECOVERED hosts used (whatever the
cases left in their staging trees), and staging then mirrors it exactly.

Every category runs twice (the ``kind`` fixture): each case published as a full archive,
and the same case published as a delta archive (sidecar format 2) on a good base that
staging holds, so that the server goes through its delta path (the delta downloaded
whole, then unpacked onto the base with the base index). The delta form of a case is
its archive with one member more in front, ``services/app/files/good.txt`` taken from
the base (``PULLBACK.data=base``), and that file's line added to its manifest; its base
is the good archive (or, for a case with an archive stored first, that archive with
good.txt added). The client keeps the base beside the delta, as a real client keeps its
chain. Expectations are the same in both forms, except where the delta path legitimately
differs, which :func:`_round` states: a refused delta also makes the server ask the client
for a full archive; a delta that needs a base file staging does not hold (BaseMismatch)
is first replayed from the chain's full archive in the same pull (reported), and only
then refused; a delta whose chain cannot be followed is never applied (staging keeps
its base). Delta-specific cases (base names, PBD1 streams, sidecars naming other bases,
manifests the applied tree does not match) are a category of their own.

Cases of a round run on separate hosts in one ``pullback-server pull``, which pulls them
in parallel: one fleet serves the whole module.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pullback.common.archive import baseindex, deltaops, tarformat
from pullback.common.archive.deltaops import BASE, DATA_KEY, REALSIZE_KEY, Copy, Data
from pullback.common.archive.directory import prepare_marks
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from pullback.common.archive.sidecar import SIDECAR_NAME, BaseRef
from pullback.common.archive.tree_list import TREE_NAME
from tests.helpers.archives import (
    MTIME,
    Entry,
    base_member,
    build_tar,
    delta_member,
    file_member,
    manifest_digest,
    publish,
    with_first,
)
from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

HOSTS = 8
RECOVERED = 4  # the leftovers of a category are alike: a few hosts show the recovery
MAX_UNPACKED_SIZE = "64M"
SIZE_REFUSAL = "it unpacks to more than 64.0 MiB (max_unpacked_size in server.yaml)"
MAX_ENTRIES = 20_000  # the million-entry archive is refused at its 20,001st member
OUTSIDE = Path(tempfile.gettempdir()) / f"pullback-hostile-{os.getpid()}"
"""Every escape target is in here; it must stay empty."""
UP = "../" * 40  # deeper than any staging path
HOSTILE = "refused a hostile archive: "
PASSWD = Path("/etc/passwd")
GOOD_NAME = "services/app/files/good.txt"
GOOD_BYTES = b"good\n"
GOOD_LINE = format_line(GOOD_NAME, hashlib.sha256(GOOD_BYTES).hexdigest())
GOOD = build_tar([Entry(GOOD_NAME, data=GOOD_BYTES)])
GOOD_MANIFEST = manifest_digest(GOOD)
GOOD_TREE = {
    b"MANIFEST.sha256",
    b"SIDECAR.json",  # the server's own record of the pull, beside the manifest
    b"TREE.list",  # and its list of the directories, symlinks and FIFOs
    b"services",
    b"services/app",
    b"services/app/files",
    b"services/app/files/good.txt",
}
KINDS = ("full", "delta")
FULL_MATRIX = bool(os.environ.get("PULLBACK_FULL_MATRIX"))
"""Also the delta form of the slowest cases (as the fault matrix's rows under it)."""
ASKED_FULL = "asked the client to make its next archive a full one"
FELL_BACK = "fell back to a full transfer"


# -- archives ---------------------------------------------------------------------------


def hostile(*entries: Entry) -> bytes:
    """An archive whose first file is harmless (written before the refusal), then ``entries``."""
    return build_tar([Entry("services/x/before.txt", data=b"written first\n"), *entries])


def member(
    name: str,
    data: bytes = b"",
    kind: bytes = tarformat.REGTYPE,
    pax: list[tuple[bytes, bytes]] | None = None,
    size: int | None = None,
    linkname: str = "",
) -> bytes:
    """One member: its header (``pax`` adds records), ``data`` and padding."""
    head = tarformat.header(
        name,
        kind,
        mode=0o644,
        size=len(data) if size is None else size,
        mtime_ns=MTIME,
        linkname=linkname,
        uname="root",
        gname="root",
        pax=pax,
    )
    return head + data + bytes((-len(data)) % tarformat.BLOCK)


def raw_archive(*members: bytes, files: dict[str, bytes] | None = None) -> bytes:
    """``members``, a manifest listing ``files`` (name: content), and the end marker."""
    lines = b"".join(
        format_line(name, hashlib.sha256(data).hexdigest()) for name, data in (files or {}).items()
    )
    return b"".join(members) + member(MANIFEST_NAME, lines) + bytes(2 * tarformat.BLOCK)


def gnu_long_name(name: str, shown_name: str) -> bytes:
    """A GNU ``L`` record carrying ``name``, then a file whose own header says ``shown_name``."""
    data = os.fsencode(name) + b"\0"
    return member("././@LongLink", data, kind=tarformat.GNU_LONGNAME) + member(shown_name, b"x")


def ustar_with_prefix(name: str) -> bytes:
    """A plain ustar file member; Python's tarfile puts what does not fit into the prefix."""
    info = tarfile.TarInfo(name)
    info.size = 1
    info.mtime = MTIME // 1_000_000_000
    return info.tobuf(format=tarfile.USTAR_FORMAT) + b"x" + bytes(511)


def pax_sparse_1_0(name: str, apparent: int) -> bytes:
    """A GNU tar 1.0 sparse file in PAX form: a map then one 512-byte data block."""
    data = b"1\n0\n512\n".ljust(512, b"\0") + b"d" * 512
    records = [
        (b"GNU.sparse.major", b"1"),
        (b"GNU.sparse.minor", b"0"),
        (b"GNU.sparse.name", os.fsencode(name)),
        (b"GNU.sparse.realsize", str(apparent).encode()),
    ]
    stored = f"{os.path.dirname(name)}/GNUSparseFile.0/{os.path.basename(name)}"
    return member(stored, data, pax=records)


def many_entries(dirs: int, per_dir: int = 1000) -> Iterator[bytes]:
    """``dirs * per_dir`` empty files ``services/m/DDDD/FFF``, one directory's headers per
    chunk, then a valid manifest listing them all. Headers are patched from one template
    (a million in under a second)."""
    template = tarformat.header(
        "services/m/0000/000", tarformat.REGTYPE, mode=0o644, mtime_ns=MTIME
    )
    head, middle, tail = template[:11], template[19:148], template[156:]
    base = sum(template[:148]) + sum(template[156:]) + 8 * ord(" ") - sum(b"0000/000")
    files = [b"%03d" % i for i in range(per_dir)]
    file_sums = [sum(f) for f in files]
    for d in range(dirs):
        directory = b"%04d/" % d
        dir_sum = base + sum(directory)
        yield b"".join(
            head + directory + f + middle + b"%06o\0 " % (dir_sum + s) + tail
            for f, s in zip(files, file_sums, strict=True)
        )
    empty = hashlib.sha256(b"").hexdigest()
    line_size = len(format_line("services/m/0000/000", empty))
    size = dirs * per_dir * line_size
    yield tarformat.header(MANIFEST_NAME, tarformat.REGTYPE, mode=0o644, size=size, mtime_ns=MTIME)
    for d in range(dirs):
        yield b"".join(format_line(f"services/m/{d:04d}/{f:03d}", empty) for f in range(per_dir))
    yield bytes((-size) % tarformat.BLOCK) + bytes(2 * tarformat.BLOCK)


def zero_bomb(members: int, each: int) -> Iterator[bytes]:
    """``members`` files of ``each`` zero bytes (and a valid manifest), in 1 MiB chunks."""
    zeros = bytes(1 << 20)
    digest = hashlib.sha256()
    for _ in range(each // len(zeros)):
        digest.update(zeros)
    names = [f"services/bomb/zeros-{i:03d}" for i in range(members)]
    for name in names:
        yield tarformat.header(name, tarformat.REGTYPE, mode=0o644, size=each, mtime_ns=MTIME)
        for _ in range(each // len(zeros)):
            yield zeros
    lines = b"".join(format_line(name, digest.hexdigest()) for name in names)
    yield member(MANIFEST_NAME, lines) + bytes(2 * tarformat.BLOCK)


# -- the harness ------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile archive and what the pull must make of it."""

    tar: bytes
    expect: str = ""
    """A refusal's words in the host's result line."""
    refused: bool = True
    opening: str = HOSTILE
    """How a refusal's reason begins."""
    check: Callable[[Path, str], None] | None = None
    """Asserts on the host's staging tree and its log lines (after the other checks)."""
    before: bytes | None = None
    """An archive stored first (leaving something in staging the case then meets; a
    delta's base)."""
    form: str | None = None
    """``"full"`` or ``"delta"``: the case is always published in that form, its archive
    as it is (a delta is then based on ``before``). None: in the form of the test's
    ``kind``, a delta made by :func:`as_delta`."""
    names: Callable[[Corpus, str, BaseRef], BaseRef] | None = None
    """For a delta: the base its sidecar names, given the corpus, the host and the base
    staging holds (by default that one). It may publish more archives on the client."""
    manifest_sha256: str | None = None
    """For a delta: what its sidecar says its manifest's sha256 is (by default the truth)."""
    falls_back: bool = False
    """The pull reports a fallback to the chain's full archive: a refused delta that
    needed a base file staging does not hold as its index says (BaseMismatch: the chain
    is replayed in the same pull before the delta is refused again), or a delta whose
    chain does not pass through what staging holds."""
    keeps_base: bool = False
    """A refused delta that is never applied (its chain cannot be followed): staging and
    its index stay the base's."""


@dataclass(frozen=True)
class Form:
    """How a case is published in one test's form."""

    first: bytes | None
    """Stored first (None: a delta's base is the good archive, pulled unless staging
    still holds the one stored last)."""
    tar: bytes
    delta: bool

    @classmethod
    def of(cls, case: Case, kind: str) -> Form:
        """The form of ``case`` in a test of ``kind`` (``"full"`` or ``"delta"``)."""
        form = case.form or kind
        if form == "full":
            return cls(case.before, case.tar, delta=False)
        if case.form == "delta":
            assert case.before is not None, "a crafted delta names the archive stored first"
            return cls(case.before, case.tar, delta=True)
        first = None if case.before is None else with_good(case.before)
        return cls(first, as_delta(case.tar), delta=True)


def with_good(tar: bytes) -> bytes:
    """``tar`` with good.txt (its bytes) as its first member: a base of :func:`as_delta`."""
    return with_first(tar, file_member(GOOD_NAME, GOOD_BYTES), GOOD_LINE)


def as_delta(tar: bytes) -> bytes:
    """The delta form of a corpus archive: good.txt taken from the base first, then every
    member of ``tar`` as it is (their data travels whole, as a changed file's does), the
    manifest listing good.txt too."""
    return with_first(tar, base_member(GOOD_NAME), GOOD_LINE)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    """The form every case of a test is published in: ``"full"`` or ``"delta"``."""
    return request.param


@dataclass
class Pulled:
    returncode: int
    stderr: str

    def lines(self, host: str) -> str:
        """The log lines of ``host``."""
        return "\n".join(line for line in self.stderr.splitlines() if f"[{host}]" in line)

    def result(self, host: str) -> str:
        """``host``'s result line (``failed: ...``, ``stored: ...``), or ''."""
        match = re.search(rf"\[{host}\] ((?:failed|stored|skipped): .*)", self.stderr)
        return match.group(1) if match else ""


class Corpus:
    """One fleet of HOSTS hosts with the limits set, and a clock for newer and newer archives."""

    def __init__(self, fleet: Fleet, count: int = HOSTS):
        self.fleet = fleet
        self.hosts = [fleet.add_host(f"h{i}") for i in range(count)]
        for host in self.hosts:
            # what the client's first run makes: where the serve endpoint leaves its marks
            # (an archive fetched, a full archive wanted)
            host.client.archives.mkdir(parents=True, exist_ok=True)
            prepare_marks(host.client.archives)
        fleet.write_config(
            parallel=count, max_unpacked_size=MAX_UNPACKED_SIZE, max_entries=MAX_ENTRIES
        )
        start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(days=30)
        self._clock = (start + dt.timedelta(minutes=n) for n in itertools.count())
        self.goods: dict[str, str] = {}
        """Per host, the name of the good archive stored last (a delta's base if staging
        still holds it)."""

    def publish(
        self,
        host: str,
        tar: bytes,
        *,
        base: BaseRef | None = None,
        manifest_sha256: str | None = None,
        keep: Iterable[str] = (),
    ) -> Path:
        """Publish ``tar`` as ``host``'s newest archive, newer than any before, the
        client's archives but those named in ``keep`` removed first; return it. With
        ``base`` it is a delta on that base (see :func:`tests.helpers.archives.publish`
        for ``manifest_sha256``)."""
        archives = self._clear(host, set(keep))
        return publish(
            archives, host, tar, next(self._clock), base=base, manifest_sha256=manifest_sha256
        )

    def publish_stream(
        self,
        host: str,
        chunks: Iterable[bytes],
        base: BaseRef | None = None,
        manifest_sha256: str | None = None,
    ) -> Path:
        """Like :meth:`publish`, the tar coming as ``chunks`` straight into zstd (a delta
        on ``base`` keeps its base on the client); returns the archive."""
        keep = () if base is None else (base.name,)
        path = self.publish(host, b"", base=base, manifest_sha256=manifest_sha256, keep=keep)
        with open(path, "wb") as out:
            zstd = subprocess.Popen(["zstd", "-q", "-c", "-T0"], stdin=subprocess.PIPE, stdout=out)
            for chunk in chunks:
                zstd.stdin.write(chunk)
            zstd.stdin.close()
            assert zstd.wait() == 0
        sidecar_path = path.with_name(path.name + ".json")
        sidecar = json.loads(sidecar_path.read_text())
        sidecar["archive"]["size"] = path.stat().st_size
        sidecar["archive"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        sidecar_path.write_text(json.dumps(sidecar))
        return path

    def _clear(self, host: str, keep: set[str] = frozenset()) -> Path:
        archives = self.fleet.hosts[host].client.archives
        for old in archives.glob(f"{host}-*.tar.zst*"):
            if old.name.removesuffix(".json") not in keep:
                old.unlink()
        return archives

    def pull(self, hosts: Iterable[str]) -> Pulled:
        selected = [arg for host in hosts for arg in ("--host", host)]
        assert selected, "a pull of no host named would pull every host"
        result = self.fleet.server("pull", *selected, timeout=120)
        return Pulled(result.returncode, result.stderr)

    def snapshots(self, host: str) -> int:
        """How many snapshots ``host``'s restic repository holds (one file each)."""
        return len(self.snapshot_ids(host))

    def snapshot_ids(self, host: str) -> set[str]:
        """The ids of the snapshots ``host``'s restic repository holds (its files' names:
        a snapshot changed or removed is a name gone)."""
        snapshots = self.fleet.repos / host / "snapshots"
        return set(os.listdir(snapshots)) if snapshots.exists() else set()

    def staging(self, host: str) -> Path:
        return self.fleet.state / "staging" / host

    def partial(self, host: str) -> Path:
        return self.fleet.state / "partial" / host

    def held(self, host: str) -> BaseRef | None:
        """The archive ``host``'s staging tree holds by the server's base index (what a
        delta on it names as its base), or None when it has no index."""
        tree = baseindex.read_tree(self.staging(host))
        return None if tree is None else BaseRef(tree.archive, tree.manifest_sha256)

    def want_full(self, host: str) -> Path:
        """The mark the server leaves on ``host``'s client when it asks for a full archive."""
        return self.fleet.hosts[host].client.archives / ".fetched-marks" / "want-full"

    def holds_good(self, host: str) -> bool:
        """Whether ``host``'s staging holds the good archive stored last, still on the client."""
        held = self.held(host)
        archives = self.fleet.hosts[host].client.archives
        return (
            held is not None
            and held.name == self.goods.get(host)
            and (archives / held.name).exists()
        )

    def hold(self, tars: dict[str, bytes]) -> dict[str, BaseRef]:
        """Store each host's archive of ``tars`` (a full one, its sidecar naming its
        manifest's sha256 as a client's does); returns what each staging then holds, by
        the server's index, which must be that archive and the manifest it shipped."""
        if not tars:
            return {}  # (a pull without --host would pull every host)
        published = {
            host: self.publish(host, tar, manifest_sha256=manifest_digest(tar))
            for host, tar in tars.items()
        }
        pulled = self.pull(tars)
        assert pulled.returncode == 0, pulled.stderr
        holds = {}
        for host, tar in tars.items():
            holds[host] = self.held(host)
            assert holds[host] == BaseRef(published[host].name, manifest_digest(tar)), host
            if tar is GOOD:
                self.goods[host] = published[host].name
        return holds

    def hold_good(self, hosts: Iterable[str]) -> dict[str, BaseRef]:
        """Bring the good archive into the staging of each of ``hosts`` that does not hold
        it still; returns what each holds."""
        self.hold({host: GOOD for host in hosts if not self.holds_good(host)})
        return {host: self.held(host) for host in hosts}


def passwd_state() -> tuple:
    """/etc/passwd's bytes, inode, link count and change time."""
    st = PASSWD.stat()
    return PASSWD.read_bytes(), st.st_ino, st.st_nlink, st.st_ctime_ns


def assert_nothing_outside(passwd_before: tuple) -> None:
    assert os.listdir(OUTSIDE) == [], f"written outside staging: {os.listdir(OUTSIDE)}"
    assert passwd_state() == passwd_before, "/etc/passwd changed"


def tree(root: Path) -> set[bytes]:
    """Every path below ``root``, as raw bytes relative to it (links are not followed)."""
    raw = os.fsencode(root)
    found = set()
    for directory, dirs, files in os.walk(raw):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(directory, name), raw))
    return found


def is_empty(directory: Path) -> bool:
    """Whether ``directory`` holds nothing (or does not exist)."""
    return not directory.exists() or not any(directory.iterdir())


def run(corpus: Corpus, cases: dict[str, Case], kind: str = "full") -> list[str]:
    """Run ``cases`` (all refused, or all neutralised), one host each, in rounds of HOSTS,
    each case in its form for ``kind`` (:class:`Form`).

    Returns the hosts used. Fails listing every case that went wrong.
    """
    kinds = {case.refused for case in cases.values()}
    assert len(kinds) == 1, "a round is all refusals or all neutralisations (one exit code)"
    problems: list[str] = []
    names = list(cases)
    used: list[str] = []
    for start in range(0, len(names), HOSTS):
        chunk = {f"h{i}": names[start + i] for i in range(min(HOSTS, len(names) - start))}
        problems += _round(corpus, {host: cases[case] for host, case in chunk.items()}, chunk, kind)
        used += [host for host in chunk if host not in used]
    assert not problems, "\n".join(problems)
    return used


def _round(corpus: Corpus, cases: dict[str, Case], names: dict[str, str], kind: str) -> list[str]:
    """Publish each case on its host (``cases`` maps host to case, ``names`` host to the
    case's name), pull them all at once, check. Returns what went wrong, case by case.

    A delta is published on the base staging holds (read from the server's index), the
    base kept on the client. Where the delta path differs from the full one, it is
    checked here: a refused delta asks the client for a full archive (the mark on the
    client), falls back to the chain's full archive only when the case says so, and
    leaves staging its base only when the case says it is never applied; a stored one
    came as a delta (the result says so) and took good.txt from its base.
    """
    forms = {host: Form.of(case, kind) for host, case in cases.items()}
    first = {host: form.first for host, form in forms.items() if form.first is not None}
    first.update(
        {
            host: GOOD
            for host, form in forms.items()
            if form.delta and form.first is None and not corpus.holds_good(host)
        }
    )
    if first:
        corpus.hold(first)
    snapshots = {host: corpus.snapshot_ids(host) for host in cases}
    bases: dict[str, BaseRef] = {}
    published: dict[str, Path] = {}
    for host, case in cases.items():
        form = forms[host]
        corpus.want_full(host).unlink(missing_ok=True)
        if not form.delta:
            published[host] = corpus.publish(host, form.tar)
            continue
        held = corpus.held(host)
        assert held is not None, f"{names[host]} ({host}): staging holds no base"
        bases[host] = held
        named = case.names(corpus, host, held) if case.names is not None else held
        published[host] = corpus.publish(
            host,
            form.tar,
            base=named,
            manifest_sha256=case.manifest_sha256,
            keep={held.name, named.name},
        )
    before = passwd_state()
    pulled = corpus.pull(cases)
    assert_nothing_outside(before)
    refused = next(iter(cases.values())).refused
    assert pulled.returncode == (1 if refused else 0), pulled.stderr
    problems = []
    for host, case in cases.items():
        result, lines, form = pulled.result(host), pulled.lines(host), forms[host]
        staging = corpus.staging(host)
        try:
            if refused:
                assert case.expect, "a refusal names its words"
                assert result.startswith(f"failed: {case.opening}"), result
                assert case.expect in result, f"expected {case.expect!r} in {result!r}"
                assert result.endswith("; nothing was stored"), result
                after = corpus.snapshot_ids(host)
                assert after == snapshots[host], f"snapshots {snapshots[host]} became {after}"
                assert not any(corpus.partial(host).iterdir()), "the partial file is left"
                if case.keeps_base:
                    assert corpus.held(host) == bases[host], "staging is not its base any more"
                else:
                    assert corpus.held(host) is None, f"an index is left: {corpus.held(host)}"
                    assert is_empty(staging), f"staging was not emptied: {sorted(tree(staging))}"
                if form.delta:
                    assert ASKED_FULL in lines, "the client was not asked for a full archive"
                    assert corpus.want_full(host).exists(), "no full request on the client"
                    assert (FELL_BACK in lines) == case.falls_back, lines
                else:
                    assert ASKED_FULL not in lines, lines
            else:
                assert result.startswith("stored: "), result
                after = corpus.snapshot_ids(host)
                assert len(after - snapshots[host]) == 1, "no snapshot was stored"
                assert snapshots[host] <= after, "an earlier snapshot is gone"
                shipped = BaseRef(published[host].name, manifest_digest(form.tar))
                assert corpus.held(host) == shipped, "the index does not name what was stored"
                if form.delta:
                    assert "; a delta (" in result, result
                    assert (FELL_BACK in lines) == case.falls_back, lines
                    if case.form is None:
                        assert (staging / GOOD_NAME).read_bytes() == GOOD_BYTES
            if case.check is not None:
                case.check(staging, lines)
        except AssertionError as exc:
            problems.append(f"{names[host]} ({host}, {kind}): {exc}")
    return problems


def recovers(corpus: Corpus, hosts: list[str]) -> None:
    """A good archive (a full one) then pulls fine on each of ``hosts``; staging mirrors it
    exactly and its index names it (after a refused delta the server asked the client
    for a full archive, and this is the full the client then makes)."""
    counts = {host: corpus.snapshots(host) for host in hosts}
    published = {host: corpus.publish(host, GOOD, manifest_sha256=GOOD_MANIFEST) for host in hosts}
    before = passwd_state()
    pulled = corpus.pull(hosts)
    assert_nothing_outside(before)
    assert pulled.returncode == 0, pulled.stderr
    for host in hosts:
        assert pulled.result(host).startswith("stored: "), pulled.lines(host)
        assert corpus.snapshots(host) == counts[host] + 1
        assert tree(corpus.staging(host)) == GOOD_TREE, host
        header, listed = (corpus.staging(host) / TREE_NAME).read_bytes().split(b"\n", 1)
        assert header == b"m  " + GOOD_MANIFEST.encode(), host
        assert listed == b"d  services\nd  services/app\nd  services/app/files\n", host
        assert not any(corpus.partial(host).iterdir())
        assert corpus.held(host) == BaseRef(published[host].name, GOOD_MANIFEST), host
        corpus.goods[host] = published[host].name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Iterator[Corpus]:
    """The fleet, each host with one good snapshot (its repository is made here, once)."""
    OUTSIDE.mkdir()
    fleet = Fleet(tmp_path_factory.mktemp("hostile"))
    try:
        corpus = Corpus(fleet)
        recovers(corpus, [host.name for host in corpus.hosts])
        yield corpus
    finally:
        fleet.stop()
        shutil.rmtree(OUTSIDE)


# -- path tricks ------------------------------------------------------------------------

LONG = "services/x/" + "a" * 120
PATHS = {
    "absolute path": Case(hostile(Entry(f"{OUTSIDE}/absolute", data=b"x")), "has an absolute path"),
    "dot-dot": Case(
        hostile(Entry(f"services/x/{UP}{OUTSIDE}/dots", data=b"x")), "a '..' component"
    ),
    "dot-dot behind a newline": Case(
        hostile(Entry(f"services/x/a\n/{UP}{OUTSIDE}/newline", data=b"x")), "a '..' component"
    ),
    "./ prefix": Case(hostile(Entry("./services/x/dot", data=b"x")), "has a '.' component"),
    "double slash": Case(hostile(Entry("services//x/double", data=b"x")), "has a '' component"),
    "empty name": Case(hostile(Entry("", data=b"x")), "member name '' is not valid"),
    "name outside services/": Case(
        hostile(Entry("etc/cron.d/pullback-evil", data=b"* * * * * root id\n")),
        "'etc/cron.d/pullback-evil' is outside services/ (not a pullback archive)",
    ),
    "name below the manifest": Case(
        hostile(Entry("MANIFEST.sha256/x", data=b"x")), "is outside services/"
    ),
    "component over 255 bytes": Case(
        hostile(Entry("services/x/" + "c" * 256, data=b"x")),
        "has a component longer than 255 bytes",
    ),
    "name over 4095 bytes": Case(
        hostile(Entry("services/x/" + "/".join(["n" * 200] * 21), data=b"x")),
        "characters is too long",
    ),
    "PAX path over an innocent name": Case(
        raw_archive(
            member("services/x/innocent", b"x", pax=[(b"path", f"{UP}{OUTSIDE}/pax".encode())])
        ),
        "a '..' component",
    ),
    "GNU long name with dot-dot": Case(
        raw_archive(gnu_long_name(f"{LONG}/{UP}{OUTSIDE}/gnu", "services/x/innocent")),
        "a '..' component",
    ),
    "ustar prefix with dot-dot": Case(
        raw_archive(ustar_with_prefix(f"{UP[:60]}{str(OUTSIDE)[1:]}/{'p' * 90}")),
        "a '..' component",
    ),
    "NUL in a PAX path": Case(
        raw_archive(member("services/x/innocent", b"x", pax=[(b"path", b"services/x/a\0b")])),
        "is not valid",
    ),
}


def test_path_tricks_are_refused(corpus, kind):
    recovers(corpus, run(corpus, PATHS, kind)[:RECOVERED])


# -- link tricks ------------------------------------------------------------------------

SYM, HARD = tarformat.SYMTYPE, tarformat.LNKTYPE
THROUGH = "would be written through the symlink"
NOT_A_FILE = "which is not a file of this archive"
LINKS = {
    "symlink, then a file through it": Case(
        hostile(
            Entry("services/x/l", SYM, linkname=str(OUTSIDE)),
            Entry("services/x/l/through", data=b"x"),
        ),
        f"{THROUGH} 'services/x/l'",
    ),
    "symlink chain": Case(
        hostile(
            Entry("services/x/a", SYM, linkname="b"),
            Entry("services/x/b", SYM, linkname=str(OUTSIDE)),
            Entry("services/x/a/chain", data=b"x"),
        ),
        f"{THROUGH} 'services/x/a'",
    ),
    "symlink replaced by a directory": Case(
        hostile(
            Entry("services/x/d", SYM, linkname=str(OUTSIDE)),
            Entry("services/x/d", tarformat.DIRTYPE, mode=0o755),
            Entry("services/x/d/replaced", data=b"x"),
        ),
        f"{THROUGH} 'services/x/d'",
    ),
    "symlink to a directory, then a hard link through it": Case(
        hostile(
            Entry("services/x/etc", SYM, linkname="/etc"),
            Entry("services/x/passwd", HARD, linkname="services/x/etc/passwd"),
        ),
        f"points to 'services/x/etc/passwd', {NOT_A_FILE}",
    ),
    "hard link placed through a symlink": Case(
        hostile(
            Entry("services/x/l", SYM, linkname=str(OUTSIDE)),
            Entry("services/x/f", data=b"x"),
            Entry("services/x/l/hard", HARD, linkname="services/x/f"),
        ),
        f"{THROUGH} 'services/x/l'",
    ),
    "hard link to /etc/passwd": Case(
        hostile(Entry("services/x/passwd", HARD, linkname="/etc/passwd")),
        "points outside the archive ('/etc/passwd')",
    ),
    "hard link up and out": Case(
        hostile(Entry("services/x/passwd", HARD, linkname=f"{UP}etc/passwd")),
        "points outside the archive",
    ),
    "hard link to a later member": Case(
        hostile(
            Entry("services/x/early", HARD, linkname="services/x/late"),
            Entry("services/x/late", data=b"x"),
        ),
        NOT_A_FILE,
    ),
    "hard link to a directory": Case(
        hostile(
            Entry("services/x/d", tarformat.DIRTYPE, mode=0o755),
            Entry("services/x/h", HARD, linkname="services/x/d"),
        ),
        NOT_A_FILE,
    ),
    "hard link to a symlink": Case(
        hostile(
            Entry("services/x/s", SYM, linkname="/etc/passwd"),
            Entry("services/x/h", HARD, linkname="services/x/s"),
        ),
        NOT_A_FILE,
    ),
    "a file, then a symlink of the same name": Case(
        hostile(
            Entry("services/x/twice", data=b"x"),
            Entry("services/x/twice", SYM, linkname="/etc/passwd"),
        ),
        "member 'services/x/twice' appears twice",
    ),
}


def test_link_tricks_are_refused(corpus, kind):
    recovers(corpus, run(corpus, LINKS, kind)[:RECOVERED])


def _links_are_data(staging: Path, lines: str) -> None:
    files = staging / "services/x"
    assert os.readlink(files / "passwd") == "/etc/passwd"
    assert os.readlink(files / "out") == str(OUTSIDE)
    assert os.readlink(files / "nowhere") == "/nonexistent/x"
    assert os.readlink(files / "odd") == os.fsdecode(b"/nowhere/\xff")


def _planted_link_replaced(staging: Path, lines: str) -> None:
    d = staging / "services/x/d"
    assert not d.is_symlink() and d.is_dir()
    assert (d / "escape").read_bytes() == b"x"


def _link_replaced_by_file(staging: Path, lines: str) -> None:
    f = staging / "services/x/f"
    assert not f.is_symlink() and f.read_bytes() == b"not passwd"


def _hard_link_broken(staging: Path, lines: str) -> None:
    files = staging / "services/x"
    assert (files / "f").read_bytes() == b"f stays"
    assert (files / "g").read_bytes() == b"g changes"
    assert (files / "f").stat().st_nlink == 1


NEUTRAL_LINKS = {
    "absolute, dangling and non-UTF-8 symlinks are kept as data": Case(
        build_tar(
            [
                Entry("services/x/passwd", SYM, linkname="/etc/passwd"),
                Entry("services/x/out", SYM, linkname=str(OUTSIDE)),
                Entry("services/x/nowhere", SYM, linkname="/nonexistent/x"),
                Entry("services/x/odd", SYM, linkname=os.fsdecode(b"/nowhere/\xff")),
            ]
        ),
        refused=False,
        check=_links_are_data,
    ),
    "a symlink planted by an earlier snapshot is not followed": Case(
        build_tar([Entry("services/x/d/escape", data=b"x")]),
        refused=False,
        check=_planted_link_replaced,
        before=build_tar([Entry("services/x/d", SYM, linkname=str(OUTSIDE))]),
    ),
    "a file where an earlier snapshot had a symlink to /etc/passwd": Case(
        build_tar([Entry("services/x/f", data=b"not passwd")]),
        refused=False,
        check=_link_replaced_by_file,
        before=build_tar([Entry("services/x/f", SYM, linkname="/etc/passwd")]),
    ),
    "a hard link left in staging is broken, not written through": Case(
        build_tar(
            [Entry("services/x/f", data=b"f stays"), Entry("services/x/g", data=b"g changes")]
        ),
        refused=False,
        check=_hard_link_broken,
        before=build_tar(
            [
                Entry("services/x/f", data=b"f stays"),
                Entry("services/x/g", HARD, linkname="services/x/f"),
            ]
        ),
    ),
}


def test_links_are_stored_as_data_and_never_followed(corpus, kind):
    recovers(corpus, run(corpus, NEUTRAL_LINKS, kind)[:RECOVERED])


# -- device nodes, FIFOs, set-id bits ---------------------------------------------------


def _dropped(name: str) -> Callable[[Path, str], None]:
    def check(staging: Path, lines: str) -> None:
        assert not os.path.lexists(staging / name)
        assert f"{name}: device node dropped" in lines
        assert (staging / "services/x/kept.txt").read_bytes() == b"kept"
        for path in tree(staging):
            mode = os.lstat(os.path.join(os.fsencode(staging), path)).st_mode
            assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)), path

    return check


def _fifo_kept(staging: Path, lines: str) -> None:
    mode = os.lstat(staging / "services/x/fifo").st_mode
    assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o666
    assert "dropped" not in lines


def _with_kept(*entries: Entry) -> bytes:
    return build_tar([*entries, Entry("services/x/kept.txt", data=b"kept")])


DEVICES = {
    "character device": Case(
        _with_kept(Entry("services/x/dev/mem", tarformat.CHRTYPE, mode=0o666)),
        refused=False,
        check=_dropped("services/x/dev/mem"),
    ),
    "block device": Case(
        _with_kept(Entry("services/x/dev/sda", tarformat.BLKTYPE, mode=0o666)),
        refused=False,
        check=_dropped("services/x/dev/sda"),
    ),
    "FIFO (kept: a named pipe is data of its application)": Case(
        _with_kept(Entry("services/x/fifo", tarformat.FIFOTYPE, mode=0o666)),
        refused=False,
        check=_fifo_kept,
    ),
    "device node where an earlier snapshot had a file": Case(
        _with_kept(Entry("services/x/was-a-file", tarformat.CHRTYPE, mode=0o666)),
        refused=False,
        check=_dropped("services/x/was-a-file"),
        before=build_tar([Entry("services/x/was-a-file", data=b"x")]),
    ),
}


def test_device_nodes_are_dropped_and_fifos_kept(corpus, kind):
    recovers(corpus, run(corpus, DEVICES, kind)[:RECOVERED])


def _mode_is(name: str, mode: int, warning: str | None) -> Callable[[Path, str], None]:
    def check(staging: Path, lines: str) -> None:
        path = staging / name
        assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(mode)
        if warning:
            assert f"{name}: {warning}" in lines
        else:
            assert "cleared" not in lines

    return check


def _directory_bits_kept(staging: Path, lines: str) -> None:
    _mode_is("services/x/shared", 0o2775, None)(staging, lines)
    _mode_is("services/x/tmp", 0o1777, None)(staging, lines)


def _capability_kept(staging: Path, lines: str) -> None:
    path = staging / "services/x/ping"
    assert os.getxattr(path, "security.capability") == CAPABILITY
    assert os.getxattr(path, "user.kept") == b"yes"
    _root_only(staging)


def _root_only(staging: Path) -> None:
    """What keeps set-id files and capabilities harmless in staging: no one but root can
    reach them."""
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    assert staging.stat().st_uid == 0


def _kept(name: str, mode: int) -> Callable[[Path, str], None]:
    def check(staging: Path, lines: str) -> None:
        _mode_is(name, mode, None)(staging, lines)
        _root_only(staging)

    return check


CAPABILITY = bytes.fromhex("01000002" + "c0000000" * 4)  # cap_setuid,cap_setgid=ep
SET_ID = {
    "setuid root file": Case(
        build_tar([Entry("services/x/su", data=b"#!/bin/sh\n", mode=0o4755)]),
        refused=False,
        check=_kept("services/x/su", 0o4755),
    ),
    "setgid file": Case(
        build_tar([Entry("services/x/sg", data=b"#!/bin/sh\n", mode=0o2711)]),
        refused=False,
        check=_kept("services/x/sg", 0o2711),
    ),
    "setuid, setgid and sticky file (sticky does nothing on a file)": Case(
        build_tar([Entry("services/x/all", data=b"#!/bin/sh\n", mode=0o7777)]),
        refused=False,
        check=_kept("services/x/all", 0o7777),
    ),
    "setgid and sticky directories are kept (group inheritance, /tmp-like)": Case(
        build_tar(
            [
                Entry("services/x/shared", tarformat.DIRTYPE, mode=0o2775),
                Entry("services/x/tmp", tarformat.DIRTYPE, mode=0o1777),
                Entry("services/x/tmp/f", data=b"x"),
            ]
        ),
        refused=False,
        check=_directory_bits_kept,
    ),
    "file capability": Case(
        raw_archive(
            member(
                "services/x/ping",
                b"#!/bin/sh\n",
                pax=[
                    (b"SCHILY.xattr.security.capability", CAPABILITY),
                    (b"SCHILY.xattr.user.kept", b"yes"),
                ],
            ),
            files={"services/x/ping": b"#!/bin/sh\n"},
        ),
        refused=False,
        check=_capability_kept,
    ),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="set-id bits and capabilities need root")
def test_set_id_bits_and_capabilities_are_kept_in_a_root_only_staging(corpus, kind):
    recovers(corpus, run(corpus, SET_ID, kind)[:RECOVERED])


# -- sparse and oversized files ---------------------------------------------------------

SIZES = {
    "PAX sparse file of 1 PiB": Case(
        raw_archive(pax_sparse_1_0("services/x/hole", 1 << 50)), SIZE_REFUSAL, opening="refused h"
    ),
    "small PAX sparse file": Case(
        raw_archive(
            member(
                "services/x/hole",
                b"d" * 512,
                pax=[(b"GNU.sparse.size", b"4096"), (b"GNU.sparse.map", b"3584,512")],
            )
        ),
        "member 'services/x/hole' is a sparse file in an old GNU format, which pullback never "
        "writes (only the PAX 1.0 sparse format is read)",
    ),
    "PAX 1.0 sparse map listing a region past the file": Case(
        raw_archive(
            member(
                "services/x/GNUSparseFile.0/hole",
                b"1\n4096\n512\n".ljust(512, b"\0") + b"d" * 512,
                pax=[
                    (b"GNU.sparse.major", b"1"),
                    (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", b"services/x/hole"),
                    (b"GNU.sparse.realsize", b"1024"),
                ],
            )
        ),
        "member 'services/x/hole': the sparse map's regions overlap or lie past the file",
    ),
    "old GNU sparse member": Case(
        raw_archive(member("services/x/hole", b"d" * 512, kind=b"S")),
        "member type b'S' is not accepted",
        opening="not a valid archive: ",
    ),
    "1 TiB declared, no data sent": Case(
        member("services/x/huge", pax=[(b"size", str(1 << 40).encode())]) + bytes(1024),
        SIZE_REFUSAL,
        opening="refused h",
    ),
    "negative size": Case(
        raw_archive(member("services/x/negative", pax=[(b"size", b"-4096")])),
        "bad PAX size b'-4096'",  # the tar reader refuses it before the unpacker sees it
        opening="not a valid archive: ",
    ),
}


def test_hostile_sparse_and_oversized_files_are_refused(corpus, kind):
    recovers(corpus, run(corpus, SIZES, kind)[:RECOVERED])


# -- names ------------------------------------------------------------------------------

NEWLINE = "services/x/line\nbreak"
NOT_UTF8 = os.fsdecode(b"services/x/caf\xe9-\xff")
FORGED = "services/x/dev\n[h9] stored: forged\x1b[2J"


def _odd_names(staging: Path, lines: str) -> None:
    names = os.listdir(os.fsencode(staging / "services/x"))
    assert b"line\nbreak" in names and b"caf\xe9-\xff" in names
    assert (staging / NEWLINE).read_bytes() == b"newline"
    assert (staging / NOT_UTF8).read_bytes() == b"latin-1"
    assert (staging / "services/x/dir\nname/deep").read_bytes() == b"deep"
    manifest = (staging / MANIFEST_NAME).read_bytes()
    assert b"services/x/line\\nbreak" in manifest  # escaped as sha256sum does


def _forged_line_escaped(staging: Path, lines: str) -> None:
    assert "services/x/dev\\n[h9] stored: forged\\x1b[2J: device node dropped" in lines
    assert "\x1b" not in lines


NAMES = {
    "newline, invalid UTF-8": Case(
        build_tar(
            [
                Entry(NEWLINE, data=b"newline"),
                Entry(NOT_UTF8, data=b"latin-1"),
                Entry("services/x/dir\nname/deep", data=b"deep"),
            ]
        ),
        refused=False,
        check=_odd_names,
    ),
    "a name that forges a log line": Case(
        build_tar([Entry(FORGED, tarformat.CHRTYPE)]),
        refused=False,
        check=_forged_line_escaped,
    ),
}


def test_odd_names_are_stored_faithfully_and_shown_escaped(corpus, kind):
    recovers(corpus, run(corpus, NAMES, kind)[:RECOVERED])


# -- delta tricks -----------------------------------------------------------------------
# What only a delta can try: take bytes from a file of staging it must not reach, make a
# file from a PBD1 stream that breaks a rule, name a base staging does not hold, ship a
# manifest the applied tree does not match. tests/unit/test_delta_unpack.py,
# test_deltaops.py and test_chain_plan.py hold most of these rules one function at a
# time; here each goes through a whole pull (real sshd, real restic) with the corpus's
# checks. Every case is a delta on BASE_TREE, stored first and kept on the client, or on
# LINKED_TREE, whose hard link makes the server check every base file a delta names in
# a first pass over the delta before it changes anything.

FILES = "services/app/files"
DATA_BIN = bytes(range(256)) * 16  # 4 KiB
BASE_PASSWD = b"a file of the base that is named passwd\n"
BASE_ENTRIES = [
    Entry(GOOD_NAME, data=GOOD_BYTES),
    Entry(f"{FILES}/data.bin", data=DATA_BIN),
    Entry(f"{FILES}/dir", tarformat.DIRTYPE, mode=0o755),
    Entry(f"{FILES}/dir/passwd", data=BASE_PASSWD),
    Entry(f"{FILES}/link", SYM, linkname="dir"),
    Entry(f"{FILES}/etc", SYM, linkname="/etc"),
]
BASE_TREE = build_tar(BASE_ENTRIES)
LINKED_TREE = build_tar([*BASE_ENTRIES, Entry(f"{FILES}/hard", HARD, linkname=GOOD_NAME)])
COUNT = struct.Struct(">Q")
FORGED_BASE = f"{FILES}/x\n[h9] stored: forged\x1b[2J"


def pbd1(*ops: Copy | Data) -> bytes:
    """The PBD1 stream of ``ops``, as the client writes it."""
    out = io.BytesIO()
    deltaops.encode(ops, out)
    return out.getvalue()


def record(kind: bytes, *numbers: int) -> bytes:
    """One raw PBD1 record header: ``kind`` and its numbers (no check of any rule)."""
    return kind + b"".join(COUNT.pack(n) for n in numbers)


def symlink(name: str, target: str) -> bytes:
    """A symlink member ``name`` pointing to ``target``; returns its bytes."""
    return member(name, kind=SYM, linkname=target)


def on_base(*members: bytes, files: dict[str, bytes], base: bytes = BASE_TREE, **how) -> Case:
    """A delta of ``members`` (then a manifest listing ``files``: name, the file's
    bytes) on ``base``; ``how`` are the other fields of its :class:`Case`."""
    return Case(raw_archive(*members, files=files), before=base, form="delta", **how)


def _mismatch(words: str, base: bytes = BASE_TREE, *members: bytes, files: dict) -> Case:
    """A delta refused because staging does not hold a base file it names (after the
    same pull replayed the chain from its full archive)."""
    return on_base(*members, files=files, base=base, expect=words, opening="", falls_back=True)


def _broken(words: str, *members: bytes, files: dict, **how) -> Case:
    """A delta refused by a rule that is not about names (a stream, a manifest)."""
    return on_base(*members, files=files, expect=words, opening="", **how)


def _not_on_the_client(corpus: Corpus, host: str, held: BaseRef) -> BaseRef:
    """Returns a base of the host's name that the client never had."""
    return BaseRef(f"{host}-20000101T000000Z.tar.zst", held.manifest_sha256)


def _another_manifest(corpus: Corpus, host: str, held: BaseRef) -> BaseRef:
    """Returns the held base's name with a manifest's sha256 that is not its own."""
    return BaseRef(held.name, "0" * 64)


def _missed_days(staging: Path, lines: str) -> None:
    assert "missed days: " in lines and "made since staging's" in lines, lines


def _another_full(corpus: Corpus, host: str, held: BaseRef) -> BaseRef:
    """Publishes a second full archive on the client (the good one, without data.bin),
    newer than the stored base; returns it as the base the delta names."""
    other = corpus.publish(host, GOOD, manifest_sha256=GOOD_MANIFEST, keep={held.name})
    return BaseRef(other.name, GOOD_MANIFEST)


def _forged_base_escaped(staging: Path, lines: str) -> None:
    assert "x\\n[h9] stored: forged\\x1b[2J is not a file of the base" in lines
    assert "\x1b" not in lines


def _bomb_emptied(staging: Path, lines: str) -> None:
    assert "emptied the staging tree (60.0 MiB): " in lines, lines


GOOD_FROM_BASE = base_member(GOOD_NAME)
STOLEN = f"{FILES}/stolen"
PLANTED = symlink(f"{FILES}/dir", "/etc")  # where the base has the directory dir/
DATA_NAME = f"{FILES}/data.bin"
WHOLE = {GOOD_NAME: GOOD_BYTES, DATA_NAME: DATA_BIN}
BLOWN_UP = 60 << 20
DELTA_TRICKS = {
    # PULLBACK.base (the base file's name) meets the resolver every member name meets;
    # the records of a delta member are checked before anything is written
    "PULLBACK.base absolute": Case(
        raw_archive(base_member(STOLEN, "/etc/passwd"), files={STOLEN: PASSWD.read_bytes()}),
        "member '/etc/passwd' has an absolute path",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.base absolute, on a linked base (a first pass reads it first)": Case(
        raw_archive(base_member(STOLEN, "/etc/passwd"), files={STOLEN: PASSWD.read_bytes()}),
        "member '/etc/passwd' has an absolute path",
        before=LINKED_TREE,
        form="delta",
    ),
    "PULLBACK.base with '..'": Case(
        raw_archive(base_member(STOLEN, f"{FILES}/{UP}etc/passwd")),
        "has a '..' component",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.base outside services/": Case(
        raw_archive(base_member(STOLEN, "etc/passwd")),
        "member 'etc/passwd' is outside services/",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.base at MANIFEST.sha256": Case(
        raw_archive(base_member(STOLEN, MANIFEST_NAME)),
        f"member '{STOLEN}' takes its bytes from 'MANIFEST.sha256'",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.base at SIDECAR.json (the server's record in staging)": Case(
        raw_archive(base_member(STOLEN, SIDECAR_NAME)),
        "member 'SIDECAR.json' is outside services/",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.base at TREE.list (the server's list in staging)": Case(
        raw_archive(base_member(STOLEN, TREE_NAME)),
        "member 'TREE.list' is outside services/",
        before=BASE_TREE,
        form="delta",
    ),
    "the manifest taken from the base": Case(
        GOOD_FROM_BASE + member(MANIFEST_NAME, pax=[(DATA_KEY, BASE)]) + bytes(1024),
        "the manifest cannot come from the base",
        before=BASE_TREE,
        form="delta",
    ),
    "PULLBACK.realsize on a member that is not a delta": Case(
        raw_archive(member(STOLEN, b"y" * 10, pax=[(REALSIZE_KEY, b"1")])),
        f"member '{STOLEN}' has a PULLBACK.realsize but no delta",
        before=BASE_TREE,
        form="delta",
    ),
    # base files staging does not hold: the chain is replayed once, then refused
    "PULLBACK.base at a directory of the base": _mismatch(
        f"{FILES}/dir is not a file of the base",
        BASE_TREE,
        base_member(STOLEN, f"{FILES}/dir"),
        files={STOLEN: b""},
    ),
    "PULLBACK.base at a symlink of the base (to /etc)": _mismatch(
        f"{FILES}/etc is not a file of the base",
        BASE_TREE,
        base_member(STOLEN, f"{FILES}/etc"),
        files={STOLEN: b""},
    ),
    "PULLBACK.base through a symlink of the base": _mismatch(
        f"{FILES}/link/passwd is not a file of the base",
        BASE_TREE,
        base_member(STOLEN, f"{FILES}/link/passwd"),
        files={STOLEN: BASE_PASSWD},
    ),
    "PULLBACK.base through a symlink to /etc the delta put where the base had a directory": (
        _mismatch(
            f"{FILES}/dir/passwd is missing from staging",
            BASE_TREE,
            PLANTED,
            base_member(STOLEN, f"{FILES}/dir/passwd"),
            files={STOLEN: BASE_PASSWD},
        )
    ),
    "the same on a linked base (the first pass sees the directory, the second the link)": (
        _mismatch(
            f"{FILES}/dir/passwd is missing from staging",
            LINKED_TREE,
            PLANTED,
            base_member(STOLEN, f"{FILES}/dir/passwd"),
            files={STOLEN: BASE_PASSWD},
        )
    ),
    "PULLBACK.base at a base file the delta replaced by a symlink to /etc/passwd": _mismatch(
        f"{GOOD_NAME} changed in staging since its index",
        BASE_TREE,
        symlink(GOOD_NAME, "/etc/passwd"),
        base_member(STOLEN, GOOD_NAME),
        files={STOLEN: GOOD_BYTES},
    ),
    "PULLBACK.data=base for a file the base never had": _mismatch(
        f"{FILES}/shadow is not a file of the base",
        BASE_TREE,
        base_member(f"{FILES}/shadow"),
        files={f"{FILES}/shadow": b"root::0:0:99999:7:::\n"},
    ),
    "the same on a linked base (the first pass refuses it: its own words)": _mismatch(
        f"{FILES}/shadow is not a file of the base in staging",
        LINKED_TREE,
        base_member(f"{FILES}/shadow"),
        files={f"{FILES}/shadow": b"root::0:0:99999:7:::\n"},
    ),
    "PULLBACK.base that forges a log line": Case(
        raw_archive(base_member(STOLEN, FORGED_BASE), files={STOLEN: b""}),
        "is not a file of the base",
        opening="",
        check=_forged_base_escaped,
        before=BASE_TREE,
        form="delta",
        falls_back=True,
    ),
    # PBD1 streams that break a rule
    "PBD1 copy past the base's end": _broken(
        "a copy of 4097 bytes at 0 reaches past the base",
        delta_member(DATA_NAME, pbd1(Copy(0, 4097)), 4097),
        files={DATA_NAME: DATA_BIN + b"\0"},
    ),
    "PBD1 claiming a PULLBACK.realsize of 1 TiB": Case(
        raw_archive(delta_member(DATA_NAME, pbd1(Copy(0, 4096)), 1 << 40)),
        SIZE_REFUSAL,
        opening="refused h",
        before=BASE_TREE,
        form="delta",
    ),
    "PBD1 making fewer bytes than its PULLBACK.realsize": _broken(
        "the delta makes 4096 bytes where 8192 were announced",
        delta_member(DATA_NAME, pbd1(Copy(0, 4096)), 8192),
        files={DATA_NAME: DATA_BIN * 2},
    ),
    "PBD1 with a truncated record": _broken(
        "the delta is cut short",
        delta_member(DATA_NAME, b"PBD1" + record(b"C", 0)[:-3], 4096),
        files=WHOLE,
    ),
    "PBD1 with bytes after its end, after a byte patched in place": _broken(
        "bytes after the end of the delta",
        delta_member(DATA_NAME, pbd1(Copy(0, 100), Data(b"X"), Copy(101, 3995)) + b"junk", 4096),
        files={DATA_NAME: DATA_BIN[:100] + b"X" + DATA_BIN[101:]},
    ),
    "PBD1 copies blowing 4 KiB up to 60 MiB, under a wrong manifest": _broken(
        f"the archive does not match its MANIFEST.sha256: {DATA_NAME} has changed",
        delta_member(DATA_NAME, pbd1(*[Copy(0, 4096)] * (BLOWN_UP // 4096)), BLOWN_UP),
        files={DATA_NAME: b"not what it makes"},
        check=_bomb_emptied,
    ),
    # manifests (the member, and the sidecar's word for it) the applied tree does not match
    "a base member whose manifest line says other bytes": _broken(
        f"does not match its MANIFEST.sha256: {DATA_NAME} has changed",
        GOOD_FROM_BASE,
        base_member(DATA_NAME),
        files={GOOD_NAME: GOOD_BYTES, DATA_NAME: b"other bytes"},
    ),
    "a PBD1 member whose result is not its manifest line": _broken(
        f"does not match its MANIFEST.sha256: {DATA_NAME} has changed",
        delta_member(DATA_NAME, pbd1(Copy(0, 100), Data(b"!")), 101),
        files={DATA_NAME: DATA_BIN[:100] + b"?"},
    ),
    "a base file its manifest does not list": _broken(
        f"does not match its MANIFEST.sha256: {DATA_NAME} is not listed",
        GOOD_FROM_BASE,
        base_member(DATA_NAME),
        files={GOOD_NAME: GOOD_BYTES},
    ),
    "a sidecar whose manifest_sha256 is not the delta's manifest": _broken(
        "its manifest is not the one its sidecar names",
        GOOD_FROM_BASE,
        files={GOOD_NAME: GOOD_BYTES},
        manifest_sha256="0" * 64,
    ),
    # sidecars naming a base that is not the one staging holds: the delta is never
    # applied onto staging's base (only onto the archive it names, if the chain leads there)
    "a sidecar naming a base the client does not have": _broken(
        "-20000101T000000Z.tar.zst is not on the client",
        GOOD_FROM_BASE,
        files={GOOD_NAME: GOOD_BYTES},
        names=_not_on_the_client,
        keeps_base=True,
    ),
    "a sidecar naming the stored base with another manifest": _broken(
        "on the client is not the one a delta names",
        GOOD_FROM_BASE,
        base_member(DATA_NAME),
        files=WHOLE,
        names=_another_manifest,
        keeps_base=True,
    ),
    "a sidecar naming another full archive of the client, which lacks a file it takes": (
        _broken(
            f"{DATA_NAME} is not a file of the base",
            GOOD_FROM_BASE,
            base_member(DATA_NAME),
            files=WHOLE,
            names=_another_full,
            # a full archive made after staging's tree: missed days, said in the log
            # (then refused for the file it lacks), not a fallback
            check=_missed_days,
        )
    ),
    # a full archive may not take anything from staging, even when staging holds a base
    "a full archive (format 1) with a base member": Case(
        raw_archive(GOOD_FROM_BASE, files={GOOD_NAME: GOOD_BYTES}),
        f"{GOOD_NAME} needs a base, and staging has none",
        opening="",
        before=BASE_TREE,
        form="full",
    ),
    "a full archive (format 1) with a PBD1 member": Case(
        raw_archive(delta_member(DATA_NAME, pbd1(Copy(0, 4096)), 4096), files=WHOLE),
        f"{DATA_NAME} needs a base, and staging has none",
        opening="",
        before=BASE_TREE,
        form="full",
    ),
}


def test_delta_tricks_are_refused(corpus):
    recovers(corpus, run(corpus, DELTA_TRICKS, "delta")[:RECOVERED])


class SpoolWatch:
    """While a pull runs, the largest file without a name (``O_TMPFILE``, or removed)
    that any process holds open in ``directory``: where the server spools a delta
    member's PBD1 stream before it applies it. Use it as a context manager; ``peak`` is
    that file's largest size seen, in bytes."""

    def __init__(self, directory: Path):
        self.prefix = f"{directory}/"
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            for fd in glob.glob("/proc/[0-9]*/fd/*"):
                try:
                    target = os.readlink(fd)
                    if target.startswith(self.prefix) and target.endswith(" (deleted)"):
                        self.peak = max(self.peak, os.stat(fd).st_size)
                except OSError:
                    continue  # the process or the descriptor is gone


JUNK = 256 << 20


def stream_after_its_end(junk: int) -> Iterator[bytes]:
    """A delta on BASE_TREE whose data.bin is a valid PBD1 stream (the base file, 4 KiB)
    followed by ``junk`` zero bytes, then a manifest: a few KiB once compressed."""
    stream = pbd1(Copy(0, 4096))
    pax = [(DATA_KEY, deltaops.DELTA), (REALSIZE_KEY, b"4096")]
    yield GOOD_FROM_BASE
    yield tarformat.header(
        DATA_NAME, tarformat.REGTYPE, mode=0o644, size=len(stream) + junk, pax=pax
    )
    yield stream
    zeros = bytes(1 << 20)
    for _ in range(junk >> 20):
        yield zeros
    yield bytes((-(len(stream) + junk)) % tarformat.BLOCK)
    yield raw_archive(files=WHOLE)


def test_a_delta_stream_writes_no_more_than_max_unpacked_size(corpus):
    """A full archive is refused after at most max_unpacked_size of writes (the zstd
    bomb); a delta member's PBD1 stream must not be a way around it. This one announces
    4 KiB (PULLBACK.realsize) and carries 256 MiB of zeros after its end: the server may
    refuse it (by its size, or as bytes after the end) but may not write more than the
    limit (64 MiB) to do so, not even into the spool it reads the stream from."""
    (held,) = corpus.hold({"h0": BASE_TREE}).values()
    corpus.want_full("h0").unlink(missing_ok=True)
    snapshots = corpus.snapshot_ids("h0")
    archive = corpus.publish_stream("h0", stream_after_its_end(JUNK), held)
    assert archive.stat().st_size < 1 << 20
    before = passwd_state()
    with SpoolWatch(corpus.fleet.state / "staging") as spool:
        pulled = corpus.pull(["h0"])
    assert_nothing_outside(before)
    assert pulled.returncode == 1, pulled.stderr
    assert pulled.result("h0").endswith("; nothing was stored"), pulled.lines("h0")
    assert corpus.snapshot_ids("h0") == snapshots
    assert corpus.held("h0") is None and is_empty(corpus.staging("h0"))
    assert ASKED_FULL in pulled.lines("h0")
    limit = 64 << 20
    assert spool.peak <= limit, (
        f"the server spooled {spool.peak >> 20} MiB of a delta member announcing 4 KiB, "
        f"more than max_unpacked_size ({limit >> 20} MiB): {pulled.result('h0')}"
    )
    recovers(corpus, ["h0"])


def test_a_hard_linked_base_file_patched_in_place_is_not_vouched_for_again(corpus):
    """A hard-linked base file is held to its inode and size only once the first pass
    checked it (applying another of its names changes its ctime). A delta on LINKED_TREE
    replaces the link's other name by a symlink (good.txt is then alone on its inode),
    patches good.txt in place to bytes of the same size, and then takes good.txt under
    a new name (PULLBACK.base), claiming the base's bytes for it in its manifest. The
    copy holds the patched bytes: the archive does not match its manifest and must be
    refused, nothing stored, no index left (else the index vouches for the copy with
    the base's digest, and a later delta can take it from there)."""
    (held,) = corpus.hold({"h0": LINKED_TREE}).values()
    corpus.want_full("h0").unlink(missing_ok=True)
    snapshots = corpus.snapshot_ids("h0")
    patched = b"evil\n"
    assert len(patched) == len(GOOD_BYTES)
    copy = f"{FILES}/copy"
    tar = raw_archive(
        symlink(f"{FILES}/hard", "/etc/passwd"),
        delta_member(GOOD_NAME, pbd1(Data(patched)), len(patched)),
        base_member(copy, GOOD_NAME),
        files={GOOD_NAME: patched, copy: GOOD_BYTES},
    )
    corpus.publish("h0", tar, base=held, keep={held.name})
    before = passwd_state()
    pulled = corpus.pull(["h0"])
    assert_nothing_outside(before)
    staging = corpus.staging("h0")
    if pulled.returncode == 0:
        check = subprocess.run(
            ["sha256sum", "--check", "--quiet", MANIFEST_NAME],
            cwd=staging,
            capture_output=True,
            text=True,
        )
        pytest.fail(
            f"{pulled.result('h0')}; staging's {copy} holds {(staging / copy).read_bytes()!r}, "
            f"its manifest and the base index say {GOOD_BYTES!r} (sha256sum --check: "
            f"{check.stdout.strip()}); the index names {corpus.held('h0')}"
        )
    assert pulled.result("h0").endswith("; nothing was stored"), pulled.lines("h0")
    assert corpus.snapshot_ids("h0") == snapshots
    assert corpus.held("h0") is None and is_empty(staging)
    assert ASKED_FULL in pulled.lines("h0")
    recovers(corpus, ["h0"])


def _no_leftovers(staging: Path) -> None:
    """No file an applied delta makes beside its base (``.pullback-*``) is left."""
    assert not [p for p in tree(staging) if os.path.basename(p).startswith(b".pullback-")]


def _renamed_and_grown(staging: Path, lines: str) -> None:
    files = staging / FILES
    assert (files / "good.txt").read_bytes() == GOOD_BYTES
    assert (files / "data.bin").read_bytes() == DATA_BIN + b"appended\n"
    assert (files / "moved").read_bytes() == BASE_PASSWD
    assert sorted(os.listdir(files)) == ["data.bin", "good.txt", "moved"]  # the rest swept
    _no_leftovers(staging)


def _moved_bytes(staging: Path, lines: str) -> None:
    assert (staging / DATA_NAME).read_bytes() == DATA_BIN[2048:] + DATA_BIN[:2048]
    _no_leftovers(staging)


def _link_broken(staging: Path, lines: str) -> None:
    good, hard = staging / GOOD_NAME, staging / FILES / "hard"
    assert good.read_bytes() == hard.read_bytes() == GOOD_BYTES
    assert good.stat().st_ino != hard.stat().st_ino
    assert good.stat().st_nlink == hard.stat().st_nlink == 1


def _link_kept(staging: Path, lines: str) -> None:
    good, hard = staging / GOOD_NAME, staging / FILES / "hard"
    assert good.read_bytes() == GOOD_BYTES
    assert good.stat().st_ino == hard.stat().st_ino


def _turned_into_links(staging: Path, lines: str) -> None:
    assert os.readlink(staging / GOOD_NAME) == "/etc/passwd"
    assert (staging / FILES / "dir").read_bytes() == b"now a file"
    assert (staging / DATA_NAME).read_bytes() == DATA_BIN


def _replayed(staging: Path, lines: str) -> None:
    assert "(1 of 2)" in lines and "2 archives applied" in lines, lines
    assert sorted(os.listdir(staging / FILES)) == ["good.txt"]
    _missed_days(staging, lines)


WELL_FORMED_DELTAS = {
    "base, renamed and appended members (the append written in place)": on_base(
        GOOD_FROM_BASE,
        delta_member(DATA_NAME, pbd1(Copy(0, 4096), Data(b"appended\n")), 4105),
        base_member(f"{FILES}/moved", f"{FILES}/dir/passwd"),
        files={
            GOOD_NAME: GOOD_BYTES,
            DATA_NAME: DATA_BIN + b"appended\n",
            f"{FILES}/moved": BASE_PASSWD,
        },
        refused=False,
        check=_renamed_and_grown,
    ),
    "a PBD1 member that moves bytes (made anew beside its base)": on_base(
        GOOD_FROM_BASE,
        delta_member(DATA_NAME, pbd1(Copy(2048, 2048), Copy(0, 2048)), 4096),
        files={GOOD_NAME: GOOD_BYTES, DATA_NAME: DATA_BIN[2048:] + DATA_BIN[:2048]},
        refused=False,
        check=_moved_bytes,
    ),
    "both names of a hard-linked base file taken from the base (the link broken)": on_base(
        GOOD_FROM_BASE,
        base_member(f"{FILES}/hard"),
        files={GOOD_NAME: GOOD_BYTES, f"{FILES}/hard": GOOD_BYTES},
        base=LINKED_TREE,
        refused=False,
        check=_link_broken,
    ),
    "a hard-linked base file and its link member": on_base(
        GOOD_FROM_BASE,
        member(f"{FILES}/hard", kind=HARD, linkname=GOOD_NAME),
        files={GOOD_NAME: GOOD_BYTES, f"{FILES}/hard": GOOD_BYTES},
        base=LINKED_TREE,
        refused=False,
        check=_link_kept,
    ),
    "a base file turned into a symlink to /etc/passwd, a base directory into a file": on_base(
        symlink(GOOD_NAME, "/etc/passwd"),
        member(f"{FILES}/dir", b"now a file"),
        base_member(DATA_NAME),
        files={f"{FILES}/dir": b"now a file", DATA_NAME: DATA_BIN},
        refused=False,
        check=_turned_into_links,
    ),
    "a delta naming another full archive of the client (replayed from it, reported)": on_base(
        GOOD_FROM_BASE,
        files={GOOD_NAME: GOOD_BYTES},
        names=_another_full,
        refused=False,
        # a full archive made after staging's tree: missed days, said, not a fallback
        check=_replayed,
    ),
}


def test_well_formed_deltas_are_stored(corpus):
    """The controls of the delta tricks: deltas made by hand as the category's are, but
    well formed, are stored and make exactly their tree."""
    recovers(corpus, run(corpus, WELL_FORMED_DELTAS, "delta")[:RECOVERED])


# -- limits -----------------------------------------------------------------------------
# In the delta form each archive is a delta on a base stored first (the good archive, or
# for the million entries LINKED_GOOD); streamed archives carry their members as they
# are, good.txt taken from the base only where it changes no count the test asserts.

LINKED_GOOD = build_tar(
    [Entry(GOOD_NAME, data=GOOD_BYTES), Entry(f"{FILES}/good-link.txt", HARD, linkname=GOOD_NAME)]
)
"""A good base with a hard link: a delta on it is read twice (a first pass checks the base
files it names before anything is written)."""


def delta_base(corpus: Corpus, host: str, kind: str, tar: bytes = GOOD) -> BaseRef | None:
    """In the delta form, ``tar`` stored on ``host`` first (the good archive only when
    staging does not hold it still) and the client's full request forgotten; returns the
    base a delta then names (None in the full form)."""
    if kind == "full":
        return None
    corpus.want_full(host).unlink(missing_ok=True)
    if tar is GOOD:
        return corpus.hold_good([host])[host]
    return corpus.hold({host: tar})[host]


def publish_in(corpus: Corpus, host: str, tar: bytes, kind: str) -> Path:
    """Publish ``tar`` on ``host`` in the form of ``kind`` (a delta made by
    :func:`as_delta` on the good archive); returns the archive."""
    base = delta_base(corpus, host, kind)
    if base is None:
        return corpus.publish(host, tar)
    return corpus.publish(host, as_delta(tar), base=base, keep={base.name})


def asked_full(corpus: Corpus, pulled: Pulled, host: str, kind: str) -> None:
    """After a refused archive: in the delta form the server asked the client for a full
    one (the mark is on the client), in the full form it did not; no index is left."""
    assert corpus.held(host) is None, corpus.held(host)
    if kind == "delta":
        assert ASKED_FULL in pulled.lines(host), pulled.lines(host)
        assert corpus.want_full(host).exists()
    else:
        assert ASKED_FULL not in pulled.lines(host), pulled.lines(host)


def slow_delta(kind: str, why: str) -> None:
    """Skip the delta form of a slow case unless PULLBACK_FULL_MATRIX is set (``why``
    says what it would cost)."""
    if kind == "delta" and not FULL_MATRIX:
        pytest.skip(f"the delta form {why}; PULLBACK_FULL_MATRIX=1 runs it")


def test_a_million_tiny_entries_are_refused_at_max_entries(corpus, kind):
    """In the delta form the archive (about 9 MB) is downloaded whole before it is read,
    and read twice, its base being hard-linked: the first pass, which checks base files,
    stops at max_entries too."""
    base = delta_base(corpus, "h0", kind, LINKED_GOOD)
    if base is None:
        corpus.publish_stream("h0", many_entries(1000))
    else:
        corpus.publish_stream("h0", itertools.chain([GOOD_FROM_BASE], many_entries(1000)), base)
    before = passwd_state()
    started = time.monotonic()
    pulled = corpus.pull(["h0"])
    elapsed = time.monotonic() - started
    assert pulled.returncode == 1, pulled.stderr
    result = pulled.result("h0")
    assert result.startswith("failed: refused h0-"), result
    assert result.endswith(
        ": it holds more than 20,000 entries (max_entries in server.yaml); nothing was stored"
    )
    assert elapsed < 20, f"the refusal took {elapsed:.1f}s"
    assert_nothing_outside(before)
    assert not any(corpus.partial("h0").iterdir())
    asked_full(corpus, pulled, "h0", kind)
    recovers(corpus, ["h0"])


def zeros_under_a_wrong_manifest(size: int) -> Iterator[bytes]:
    """One file of ``size`` zero bytes whose manifest line is wrong: it unpacks whole,
    then the pull fails (a few KiB on the wire)."""
    zeros = bytes(1 << 20)
    yield tarformat.header("services/x/zeros", tarformat.REGTYPE, mode=0o644, size=size)
    for _ in range(size >> 20):
        yield zeros
    yield member(MANIFEST_NAME, format_line("services/x/zeros", "0" * 64)) + bytes(1024)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_failed_pull_keeps_no_disk_from_the_other_hosts(tmp_path, kind):
    """Found by an attack: 9 KiB on the wire unpacked to 281 MiB in the failed host's
    staging tree, which was kept, so the other host failed "not enough free space" night
    after night. A failed fetch now empties its staging tree.

    In the delta form the archive is a delta on the good archive, kept on the client: the
    first night it is applied onto staging's base, the second (no index left) after the
    chain's full archive in the same pull, a fallback; both nights staging ends empty. That form
    runs only with PULLBACK_FULL_MATRIX=1 (a fleet of its own: it doubles the module's
    slowest test); the delta tricks' 60 MiB PBD1 bomb shows a delta's writes emptied."""
    slow_delta(kind, "needs a second fleet and tmpfs (about 15 s)")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(state)], check=True)
    fleet = Fleet(tmp_path / "fleet")
    fleet.state = state
    try:
        corpus = Corpus(fleet, count=2)
        fleet.write_config(parallel=1, min_free_space="100M", max_unpacked_size="1G")
        base = delta_base(corpus, "h0", kind)
        archive = corpus.publish_stream("h0", zeros_under_a_wrong_manifest(200 << 20), base)
        assert archive.stat().st_size < 64 << 10
        corpus.hosts[1].make_archive({"big.bin": os.urandom(40 << 20)})
        for night in (1, 2):
            pulled = corpus.pull(["h0", "h1"])
            assert pulled.result("h0").startswith("failed: "), pulled.lines("h0")
            assert "does not match its MANIFEST.sha256" in pulled.result("h0")
            assert pulled.result("h1").startswith(("stored: ", "skipped: ")), pulled.lines("h1")
            assert list(corpus.staging("h0").iterdir()) == [], f"night {night}"
            asked_full(corpus, pulled, "h0", kind)
            if kind == "delta":
                # night 2: staging was emptied, so the chain's full comes first (reported)
                assert (FELL_BACK in pulled.lines("h0")) == (night == 2), pulled.lines("h0")
                assert ("(1 of 2)" in pulled.lines("h0")) == (night == 2), pulled.lines("h0")
                corpus.want_full("h0").unlink()
        assert corpus.snapshots("h1") == 1
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)


BOMB_TAIL = build_tar([Entry("services/d/good.txt", data=b"good\n")])


def directory_bomb(repeats: int, distinct: int) -> Iterator[bytes]:
    """One directory repeated ``repeats`` times and ``distinct`` more, each header with
    1 MiB of extended attributes (almost nothing once compressed), then a good file."""
    xattrs = [(f"SCHILY.xattr.user.x{i}".encode(), b"x" * 60_000) for i in range(17)]
    same = tarformat.header("services/d", tarformat.DIRTYPE, mode=0o755, mtime_ns=MTIME, pax=xattrs)
    for _ in range(repeats):
        yield same
    for i in range(distinct):
        yield tarformat.header(
            f"services/d/{i}", tarformat.DIRTYPE, mode=0o755, mtime_ns=MTIME, pax=xattrs
        )
    yield BOMB_TAIL


PULL_RSS_BOUND = 300 << 20
"""What a host's pull process may reach on the directory bomb (ordinary pulls: ~45 MiB)."""


def test_directory_metadata_cannot_grow_the_servers_memory(corpus, kind):
    base = delta_base(corpus, "h3", kind)
    digest = None if base is None else manifest_digest(BOMB_TAIL)
    corpus.publish_stream("h3", directory_bomb(repeats=600, distinct=40), base, digest)
    pulled = corpus.pull(["h3"])
    # 600 MB of headers for one directory were all kept until the end; now one record
    status = json.loads((corpus.fleet.state / "status.json").read_text())["hosts"]["h3"]
    assert status["pull_peak_rss"] < PULL_RSS_BOUND, status["pull_peak_rss"]
    assert pulled.result("h3").startswith("stored: "), pulled.lines("h3")
    assert ("; a delta (" in pulled.result("h3")) == (kind == "delta"), pulled.result("h3")
    recovers(corpus, ["h3"])


def test_a_zstd_tar_bomb_is_refused_at_max_unpacked_size(corpus, kind):
    """In the delta form the bomb is downloaded whole (under 1 MiB) before it is unpacked;
    it takes nothing from its base, so the same first 64 MiB are written."""
    base = delta_base(corpus, "h1", kind)
    archive = corpus.publish_stream("h1", zero_bomb(members=16, each=64 << 20), base)  # 1 GiB
    assert archive.stat().st_size < 1 << 20  # a bomb: under 1 MiB compressed
    before = passwd_state()
    pulled = corpus.pull(["h1"])
    assert pulled.returncode == 1, pulled.stderr
    result = pulled.result("h1")
    assert result == f"failed: refused {archive.name}: {SIZE_REFUSAL}; nothing was stored"
    assert_nothing_outside(before)
    # the first 64 MiB were within the limit and were written; the failed pull empties
    # the staging tree, so the bomb keeps no space from the other hosts
    assert "emptied the staging tree (64.0 MiB): " in pulled.stderr
    assert list(corpus.staging("h1").iterdir()) == []
    asked_full(corpus, pulled, "h1", kind)
    recovers(corpus, ["h1"])


def test_a_host_may_have_its_own_limits(corpus, kind):
    corpus.fleet.host_extra["h2"] = {"max_entries": 5, "max_unpacked_size": "1K"}
    corpus.fleet.write_config()
    try:
        tar = build_tar([Entry(f"services/x/{i}", data=b"x") for i in range(5)])
        publish_in(corpus, "h2", tar, kind)
        pulled = corpus.pull(["h2"])
        assert pulled.returncode == 1
        assert "it holds more than 5 entries (max_entries in server.yaml)" in pulled.result("h2")
        asked_full(corpus, pulled, "h2", kind)
        publish_in(corpus, "h2", build_tar([Entry("services/x/big", data=b"x" * 1025)]), kind)
        pulled = corpus.pull(["h2"])
        assert "it unpacks to more than 1.0 KiB" in pulled.result("h2")
        asked_full(corpus, pulled, "h2", kind)
    finally:
        del corpus.fleet.host_extra["h2"]
        corpus.fleet.write_config()
    recovers(corpus, ["h2"])


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_unpacked_size", "lots", "expected a size like 512M, 200G or 1TiB, got 'lots'"),
        ("max_entries", 0, "0 is less than the minimum of 1"),
    ],
)
def test_limits_are_validated(corpus, key, value, expected):
    corpus.fleet.write_config(**{key: value})
    try:
        result = corpus.fleet.server("pull")
    finally:
        corpus.fleet.write_config(max_unpacked_size=MAX_UNPACKED_SIZE, max_entries=MAX_ENTRIES)
    assert result.returncode == 2
    assert "server.yaml:" in result.stderr and key in result.stderr
    assert expected in result.stderr
