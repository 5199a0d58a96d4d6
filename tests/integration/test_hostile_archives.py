"""A corpus of hostile archives: each is refused or neutralised, nothing lands outside staging.

A compromised client controls its archive, the archive's manifest and its sidecar, so
every archive here arrives with a matching sha256. Each case says what the pull must do:
refuse the archive (the host fails with plain words, no snapshot is stored, the partial
download is gone) or neutralise it (a snapshot is stored and staging holds the harmless
form). After every round: nothing was created outside staging (every escape target lies
in ``OUTSIDE``, which must stay empty) and /etc/passwd is untouched. After every category:
a good archive pulls fine on the first RECOVERED hosts used (whatever the cases left in
their staging trees), and staging then mirrors it exactly.

Cases of a round run on separate hosts in one ``pullback-server pull``, which pulls them
in parallel: one fleet serves the whole module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pullback.common.archive import tarformat
from pullback.common.archive.manifest import MANIFEST_NAME, format_line
from tests.helpers.archives import MTIME, Entry, build_tar, publish
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
GOOD = build_tar([Entry("services/app/files/good.txt", data=b"good\n")])
GOOD_TREE = {
    b"MANIFEST.sha256",
    b"SIDECAR.json",  # the server's own record of the pull, beside the manifest
    b"services",
    b"services/app",
    b"services/app/files",
    b"services/app/files/good.txt",
}


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
) -> bytes:
    """One member: its header (``pax`` adds records), ``data`` and padding."""
    head = tarformat.header(
        name,
        kind,
        mode=0o644,
        size=len(data) if size is None else size,
        mtime_ns=MTIME,
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
    """For a neutralised case: asserts on the host's staging tree and its log lines."""
    before: bytes | None = None
    """An archive stored first (leaving something in staging the case then meets)."""


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
        fleet.write_config(
            parallel=count, max_unpacked_size=MAX_UNPACKED_SIZE, max_entries=MAX_ENTRIES
        )
        start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(days=30)
        self._clock = (start + dt.timedelta(minutes=n) for n in itertools.count())

    def publish(self, host: str, tar: bytes) -> Path:
        """Publish ``tar`` as ``host``'s only archive, newer than any before; return it."""
        return publish(self._clear(host), host, tar, next(self._clock))

    def publish_stream(self, host: str, chunks: Iterable[bytes]) -> Path:
        """Like :meth:`publish`, the tar coming as ``chunks`` straight into zstd."""
        path = self.publish(host, b"")
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

    def _clear(self, host: str) -> Path:
        archives = self.fleet.hosts[host].client.archives
        for old in archives.glob(f"{host}-*.tar.zst*"):
            old.unlink()
        return archives

    def pull(self, hosts: Iterable[str]) -> Pulled:
        selected = [arg for host in hosts for arg in ("--host", host)]
        result = self.fleet.server("pull", *selected, timeout=120)
        return Pulled(result.returncode, result.stderr)

    def snapshots(self, host: str) -> int:
        """How many snapshots ``host``'s restic repository holds (one file each)."""
        snapshots = self.fleet.repos / host / "snapshots"
        return len(os.listdir(snapshots)) if snapshots.exists() else 0

    def staging(self, host: str) -> Path:
        return self.fleet.state / "staging" / host

    def partial(self, host: str) -> Path:
        return self.fleet.state / "partial" / host


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


def run(corpus: Corpus, cases: dict[str, Case]) -> list[str]:
    """Run ``cases`` (all refused, or all neutralised), one host each, in rounds of HOSTS.

    Returns the hosts used. Fails listing every case that went wrong.
    """
    kinds = {case.refused for case in cases.values()}
    assert len(kinds) == 1, "a round is all refusals or all neutralisations (one exit code)"
    problems: list[str] = []
    names = list(cases)
    used: list[str] = []
    for start in range(0, len(names), HOSTS):
        chunk = {f"h{i}": names[start + i] for i in range(min(HOSTS, len(names) - start))}
        problems += _round(corpus, {host: cases[case] for host, case in chunk.items()}, chunk)
        used += [host for host in chunk if host not in used]
    assert not problems, "\n".join(problems)
    return used


def _round(corpus: Corpus, cases: dict[str, Case], names: dict[str, str]) -> list[str]:
    """Publish each case on its host (``cases`` maps host to case, ``names`` host to the
    case's name), pull them all at once, check. Returns what went wrong, case by case."""
    first = {host: case.before for host, case in cases.items() if case.before is not None}
    for host, tar in first.items():
        corpus.publish(host, tar)
    if first:
        pulled = corpus.pull(first)
        assert pulled.returncode == 0, pulled.stderr
    counts = {host: corpus.snapshots(host) for host in cases}
    for host, case in cases.items():
        corpus.publish(host, case.tar)
    before = passwd_state()
    pulled = corpus.pull(cases)
    assert_nothing_outside(before)
    refused = next(iter(cases.values())).refused
    assert pulled.returncode == (1 if refused else 0), pulled.stderr
    problems = []
    for host, case in cases.items():
        result = pulled.result(host)
        try:
            if refused:
                assert case.expect, "a refusal names its words"
                assert result.startswith(f"failed: {case.opening}"), result
                assert case.expect in result, f"expected {case.expect!r} in {result!r}"
                assert result.endswith("; nothing was stored"), result
                assert corpus.snapshots(host) == counts[host], "a snapshot was stored"
                assert not any(corpus.partial(host).iterdir()), "the partial file is left"
            else:
                assert result.startswith("stored: "), result
                assert corpus.snapshots(host) == counts[host] + 1, "no snapshot was stored"
                if case.check is not None:
                    case.check(corpus.staging(host), pulled.lines(host))
        except AssertionError as exc:
            problems.append(f"{names[host]} ({host}): {exc}")
    return problems


def recovers(corpus: Corpus, hosts: list[str]) -> None:
    """A good archive then pulls fine on each of ``hosts``; staging mirrors it exactly."""
    counts = {host: corpus.snapshots(host) for host in hosts}
    for host in hosts:
        corpus.publish(host, GOOD)
    before = passwd_state()
    pulled = corpus.pull(hosts)
    assert_nothing_outside(before)
    assert pulled.returncode == 0, pulled.stderr
    for host in hosts:
        assert pulled.result(host).startswith("stored: "), pulled.lines(host)
        assert corpus.snapshots(host) == counts[host] + 1
        assert tree(corpus.staging(host)) == GOOD_TREE, host
        assert not any(corpus.partial(host).iterdir())


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


def test_path_tricks_are_refused(corpus):
    recovers(corpus, run(corpus, PATHS)[:RECOVERED])


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


def test_link_tricks_are_refused(corpus):
    recovers(corpus, run(corpus, LINKS)[:RECOVERED])


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


def test_links_are_stored_as_data_and_never_followed(corpus):
    recovers(corpus, run(corpus, NEUTRAL_LINKS)[:RECOVERED])


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


def test_device_nodes_are_dropped_and_fifos_kept(corpus):
    recovers(corpus, run(corpus, DEVICES)[:RECOVERED])


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
def test_set_id_bits_and_capabilities_are_kept_in_a_root_only_staging(corpus):
    recovers(corpus, run(corpus, SET_ID)[:RECOVERED])


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


def test_hostile_sparse_and_oversized_files_are_refused(corpus):
    recovers(corpus, run(corpus, SIZES)[:RECOVERED])


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


def test_odd_names_are_stored_faithfully_and_shown_escaped(corpus):
    recovers(corpus, run(corpus, NAMES)[:RECOVERED])


# -- limits -----------------------------------------------------------------------------


def test_a_million_tiny_entries_are_refused_at_max_entries(corpus):
    corpus.publish_stream("h0", many_entries(1000))
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
def test_a_failed_pull_keeps_no_disk_from_the_other_hosts(tmp_path):
    """Found by an attack: 9 KiB on the wire unpacked to 281 MiB in the failed host's
    staging tree, which was kept, so the other host failed "not enough free space" night
    after night. A failed fetch now empties its staging tree."""
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(state)], check=True)
    fleet = Fleet(tmp_path / "fleet")
    fleet.state = state
    try:
        corpus = Corpus(fleet, count=2)
        fleet.write_config(parallel=1, min_free_space="100M", max_unpacked_size="1G")
        archive = corpus.publish_stream("h0", zeros_under_a_wrong_manifest(200 << 20))
        assert archive.stat().st_size < 64 << 10
        corpus.hosts[1].make_archive({"big.bin": os.urandom(40 << 20)})
        for night in (1, 2):
            pulled = corpus.pull(["h0", "h1"])
            assert pulled.result("h0").startswith("failed: "), pulled.lines("h0")
            assert "does not match its MANIFEST.sha256" in pulled.result("h0")
            assert pulled.result("h1").startswith(("stored: ", "skipped: ")), pulled.lines("h1")
            assert list(corpus.staging("h0").iterdir()) == [], f"night {night}"
        assert corpus.snapshots("h1") == 1
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)


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
    yield build_tar([Entry("services/d/good.txt", data=b"good\n")])


PULL_RSS_BOUND = 300 << 20
"""What a host's pull process may reach on the directory bomb (ordinary pulls: ~45 MiB)."""


def test_directory_metadata_cannot_grow_the_servers_memory(corpus):
    corpus.publish_stream("h3", directory_bomb(repeats=600, distinct=40))
    pulled = corpus.pull(["h3"])
    # 600 MB of headers for one directory were all kept until the end; now one record
    status = json.loads((corpus.fleet.state / "status.json").read_text())["hosts"]["h3"]
    assert status["pull_peak_rss"] < PULL_RSS_BOUND, status["pull_peak_rss"]
    assert pulled.result("h3").startswith("stored: "), pulled.lines("h3")
    recovers(corpus, ["h3"])


def test_a_zstd_tar_bomb_is_refused_at_max_unpacked_size(corpus):
    archive = corpus.publish_stream("h1", zero_bomb(members=16, each=64 << 20))  # 1 GiB
    assert archive.stat().st_size < 1 << 20  # a bomb: under 1 MiB compressed
    before = passwd_state()
    pulled = corpus.pull(["h1"])
    assert pulled.returncode == 1, pulled.stderr
    result = pulled.result("h1")
    assert result == f"failed: refused {archive.name}: {SIZE_REFUSAL}; nothing was stored"
    assert_nothing_outside(before)
    # the first 64 MiB were within the limit and were written; the failed pull empties
    # the staging tree, so the bomb keeps no space from the other hosts
    assert "emptied the staging tree of the failed pull (64.0 MiB)" in pulled.stderr
    assert list(corpus.staging("h1").iterdir()) == []
    recovers(corpus, ["h1"])


def test_a_host_may_have_its_own_limits(corpus):
    corpus.fleet.host_extra["h2"] = {"max_entries": 5, "max_unpacked_size": "1K"}
    corpus.fleet.write_config()
    try:
        corpus.publish("h2", build_tar([Entry(f"services/x/{i}", data=b"x") for i in range(5)]))
        pulled = corpus.pull(["h2"])
        assert pulled.returncode == 1
        assert "it holds more than 5 entries (max_entries in server.yaml)" in pulled.result("h2")
        corpus.publish("h2", build_tar([Entry("services/x/big", data=b"x" * 1025)]))
        pulled = corpus.pull(["h2"])
        assert "it unpacks to more than 1.0 KiB" in pulled.result("h2")
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
