"""Hostile SSH_ORIGINAL_COMMAND strings against the serve endpoint (docs/architecture.md,
*The serve protocol*).

``parse_request`` accepts exactly the four requests of the strict grammar below and
refuses everything else; ``serve`` answers a refused request with exit 2, without
touching the archive directory and without starting any process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pullback.client import serve as serve_module
from pullback.client.config import load_client_config
from pullback.client.serve import serve
from pullback.common.archive import directory
from pullback.common.protocol import Refused, parse_request
from tests.helpers.client import ClientSandbox

pytestmark = pytest.mark.unit

PROPERTY = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# The grammar, written out independently of client/serve.py (ASCII digits only).
ARCHIVE = r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9]{8}T[0-9]{6}Z\.tar(?:\.zst|\.gz)?"
OFFSET = r"0|[1-9][0-9]{0,18}"
GRAMMAR = re.compile(
    rf"(?P<verb>list|lock|full|session)|(?P<send>send) (?P<archive>{ARCHIVE}) (?P<offset>{OFFSET})"
    rf"|(?P<fetched>fetched) (?P<name>{ARCHIVE})(?: (?P<word>deltas|lean-deltas))?"
)
"""The six requests (common/protocol.py): hypothesis once found ``full`` accepted while
this said only list and lock (protocol 2 added it)."""
MAX_REQUEST = 512

ARCHIVES = ["web1-20261122T030000Z.tar.zst", "web1-20261123T030000Z.tar.gz"]
NEAR_NAMES = [
    *ARCHIVES,
    "web1-20261124T030000Z.tar",  # well-formed, not there
    "../web1-20261122T030000Z.tar.zst",
    "./web1-20261122T030000Z.tar.zst",
    "fetched/web1-20261122T030000Z.tar.zst",
    "web1-20261122T030000Z.tar.zst/",
    "web1-20261122T030000Z.tar.zst.json",
    "web1-20261122T030000Z.tar.xz",
    "web1-2026112T030000Z.tar.zst",
    "web1-20261122T030000.tar.zst",
    ".web1-20261122T030000Z.tar.zst",
    "-20261122T030000Z.tar.zst",
    "web1-\uff120261122T030000Z.tar.zst",  # a fullwidth digit
    "web1-20261122T030000Z.tar.zst\n",
    "/etc/passwd",
    ".lock",
    "*",
    "$(reboot)",
    "`id`",
    "'web1-20261122T030000Z.tar.zst'",
]
NEAR_OFFSETS = [
    *("0", "00", "007", "1", "-1", "-0", "+1", "1e3", "0x10", "1.5", " 1", "\uff11", "\u0663"),
    *("9" * 19, "9" * 20, "1" + "0" * 19, str(2**63), str(2**64), "99999999999999999999999"),
]
SEPARATORS = ["  ", "\t", "\n", "\r\n", ";", " ; ", "&&", "|", "\x00", ""]
WORDS = ["--help", "-c", "/etc/shadow", "$(id)", "`id`", "../", "&&", "\\", "'", '"', "*"]

names = st.sampled_from(NEAR_NAMES) | st.from_regex(rf"\A{ARCHIVE}\Z")
offsets = st.one_of(
    st.sampled_from(NEAR_OFFSETS),
    st.integers(-(10**25), 10**25).map(str),
    st.integers(0, 10**6).map("0{}".format),  # leading zeros
)
any_words = names | offsets | st.sampled_from(WORDS)
SHAPES = {  # the words a verb takes: right in kind, often wrong in detail
    "list": [],
    "lock": [],
    "send": [names, offsets],
    "fetched": [names],
    "LIST": [],
    "Send": [names, offsets],
    "fetch": [names],
    "sendfile": [names, offsets],
}


@st.composite
def near_misses(draw) -> str:
    """The verbs with almost-right arguments, separators and decoration."""
    verb = draw(st.sampled_from(sorted(SHAPES)))
    words = [draw(kind) for kind in SHAPES[verb]]
    if draw(st.booleans()):
        words += draw(st.lists(any_words, max_size=2))
    if words and draw(st.booleans()):
        del words[draw(st.integers(0, len(words) - 1))]
    separators = st.just(" ") | st.sampled_from(SEPARATORS)
    text = verb + "".join(draw(separators) + word for word in words)
    prefix = draw(st.just("") | st.sampled_from([" ", "\t", "exec ", "sudo "]))
    suffix = draw(st.just("") | st.sampled_from([" ", "\n", ";", " #", "\x00", "; rm -rf /"]))
    return prefix + text + suffix


valid_requests = st.one_of(
    st.sampled_from(["list", "lock"]),
    st.builds(
        "send {} {}".format,
        st.from_regex(rf"\A{ARCHIVE}\Z"),
        st.integers(0, 10**19 - 1),
    ),
    st.from_regex(rf"\A{ARCHIVE}\Z").map("fetched {}".format),
)
requests = (
    st.text()
    | st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape"))
    | near_misses()
    | valid_requests
)


@PROPERTY
@given(near_misses() | requests)
@example("send web1-20261122T030000Z.tar.zst 9999999999999999999")
@example("send web1-20261122T030000Z.tar.zst 10000000000000000000")
@example("fetched web1-20261122T030000Z.tar.zst " + " " * 600)
@example("list\x00")
@example("send web1-20261122T030000Z.tar.zst \u0663")
@example("full")
@example("session")
@example("fetched web1-20261122T030000Z.tar.zst deltas")
@example("fetched web1-20261122T030000Z.tar.zst lean-deltas")
@example("fetched web1-20261122T030000Z.tar.zst lean")
def test_parse_request_accepts_exactly_the_grammar(text):
    """parse_request returns a Request iff the text is one of the four requests of the
    strict grammar (and at most 512 characters); its fields are what the text said."""
    match = GRAMMAR.fullmatch(text) if len(text) <= MAX_REQUEST else None
    try:
        request = parse_request(text)
    except Refused:
        assert match is None, f"refused a valid request {text!r}"
        return
    assert match is not None, f"accepted {text!r}"
    if match["verb"]:
        assert (request.verb, request.archive, request.offset) == (match["verb"], "", 0)
    elif match["send"]:
        assert (request.verb, request.archive) == ("send", match["archive"])
        assert str(request.offset) == match["offset"] and 0 <= request.offset < 10**19
    else:
        assert (request.verb, request.archive) == ("fetched", match["name"])
        assert (request.deltas, request.lean) == (
            match["word"] is not None,
            match["word"] == "lean-deltas",
        )


@settings(PROPERTY, max_examples=100)
@given(valid_requests)
def test_every_well_formed_request_is_accepted(text):
    """The other direction, from generated well-formed requests only."""
    request = parse_request(text)
    assert request.verb in ("list", "lock", "send", "fetched")
    assert text.split(" ")[0] == request.verb


# --- the whole endpoint ------------------------------------------------------------------


@functools.cache
def sandbox() -> ClientSandbox:
    """A client with two archives (and their sidecars) and one fetched archive."""
    box = ClientSandbox(Path(tempfile.mkdtemp(prefix="pullback-serve-fuzz-")), hostname="web1")
    box.write_config(fetched_keep=5)
    return box


@pytest.fixture(scope="module", autouse=True)
def _remove_sandbox():
    yield
    if sandbox.cache_info().currsize:
        shutil.rmtree(sandbox().root, ignore_errors=True)


def reset_archives(box: ClientSandbox) -> None:
    shutil.rmtree(box.archives, ignore_errors=True)
    (box.archives / "fetched").mkdir(parents=True)
    for name in ARCHIVES:
        (box.archives / name).write_bytes(name.encode() * 100)
        (box.archives / f"{name}.json").write_text("{}\n")
    (box.archives / "fetched" / "web1-20261121T030000Z.tar").write_bytes(b"old")
    directory.prepare_marks(box.archives)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every entry below ``directory`` (itself included): size and mtime in nanoseconds."""
    entries = {".": directory.stat()}
    entries.update({str(p.relative_to(directory)): p.lstat() for p in directory.rglob("*")})
    return {name: (st.st_size, st.st_mtime_ns) for name, st in entries.items()}


SPAWNERS = [
    (subprocess, "Popen"),
    *((os, name) for name in ("system", "popen", "fork", "forkpty", "posix_spawn")),
    *((os, name) for name in ("posix_spawnp", "execv", "execve", "execvp", "execvpe")),
    *((os, name) for name in ("execl", "execle", "execlp", "execlpe", "spawnv", "spawnve")),
]


@contextlib.contextmanager
def no_processes(spawned: list):
    """Every way of starting a process records the attempt and fails."""

    def refuse(*args, **kwargs):
        spawned.append(args)
        raise AssertionError(f"a process was started: {args!r}")

    with contextlib.ExitStack() as stack:
        for module, name in SPAWNERS:
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, refuse))
        yield


QUIET_AUDIT = logging.getLogger("tests.serve_fuzz.audit")
QUIET_AUDIT.addHandler(logging.NullHandler())
QUIET_AUDIT.propagate = False


@PROPERTY
@given(requests)
@example(f"send {ARCHIVES[0]} 0")
@example(f"send {ARCHIVES[0]} 100000")
@example(f"fetched {ARCHIVES[1]}")
@example("fetched web1-20261124T030000Z.tar")
@example("fetched web1-20261121T030000Z.tar")
@example("list")
@example("full")
@example("session")  # (hypothesis drew it from the code's constants; stdin was pytest's)
def test_serve_changes_nothing_for_a_refused_request(text):
    """``serve``: exit 0 only for a request of the grammar; a refused one exits 2, answers
    nothing and leaves the archive directory exactly as it was; no process is ever
    started; ``send`` sends exactly the bytes from the offset on."""
    box = sandbox()
    reset_archives(box)
    config = load_client_config(box.config)
    before = snapshot(box.archives)
    spawned: list = []
    with (
        tempfile.TemporaryFile() as out,
        open(os.devnull, "rb") as nothing,  # (a session's lines: none, it ends at once)
        no_processes(spawned),
        mock.patch.object(serve_module, "_audit_logger", return_value=QUIET_AUDIT),
    ):
        code = serve(config, text, out.fileno(), stdin=nothing.fileno())
        out.seek(0)
        sent = out.read()
    assert spawned == []
    if code != 0:
        assert code == 2
        assert sent == b""
        assert snapshot(box.archives) == before
        return
    request = parse_request(text)
    if request.verb == "send":
        assert sent == (box.archives / request.archive).read_bytes()[request.offset :]
    after = snapshot(box.archives)
    if request.verb in ("fetched", "full"):  # a mark, and nothing else
        marks = {k for k in after if k.startswith(".fetched-marks")}
        mark = request.archive if request.verb == "fetched" else "want-full"
        assert marks == {".fetched-marks", f".fetched-marks/{mark}"}
        after = {k: v for k, v in after.items() if not k.startswith(".fetched-marks")}
        before = {k: v for k, v in before.items() if not k.startswith(".fetched-marks")}
    assert after == before


def test_serve_reads_ssh_original_command(monkeypatch):
    """Without an explicit text, the request comes from SSH_ORIGINAL_COMMAND."""
    box = sandbox()
    reset_archives(box)
    monkeypatch.setattr(serve_module, "_audit_logger", lambda: QUIET_AUDIT)
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "send ../../etc/passwd 0")
    before = snapshot(box.archives)
    with tempfile.TemporaryFile() as out:
        assert serve(load_client_config(box.config), out=out.fileno()) == 2
        assert out.tell() == 0
    assert snapshot(box.archives) == before
