"""The serve protocol: what the server writes is what the client parses, and back."""

from __future__ import annotations

import json

import pytest

from pullback.common import protocol
from pullback.common.protocol import LIST, LOCK, Listing, Request, Verb


@pytest.mark.parametrize(
    ("request_", "text"),
    [
        (LIST, "list"),
        (LOCK, "lock"),
        (Request.send("web1-20261122T030000Z.tar.zst", 0), "send web1-20261122T030000Z.tar.zst 0"),
        (
            Request.send("web1-20261122T030000Z.tar.gz", 123),
            "send web1-20261122T030000Z.tar.gz 123",
        ),
        (Request.fetched("web1-20261122T030000Z.tar"), "fetched web1-20261122T030000Z.tar"),
        (
            Request.fetched("web1-20261122T030000Z.tar", deltas=True),
            "fetched web1-20261122T030000Z.tar deltas",
        ),
        (
            Request.fetched("web1-20261122T030000Z.tar", lean=True),
            "fetched web1-20261122T030000Z.tar lean-deltas",
        ),
    ],
)
def test_a_request_is_written_as_the_client_parses_it(request_, text):
    assert request_.text == text
    assert protocol.parse_request(text) == request_


def test_a_listing_reads_back_as_written():
    listing = Listing(
        "web1",
        "1.2.3",
        {"pid": 7, "host": "web1", "started": "2026-11-30T03:00:00Z", "purpose": "x"},
        [{"name": "web1-20261122T030000Z.tar.zst", "size": 10, "sidecar": {"format": 1}}],
        [{"name": "web1-20261121T030000Z.tar.zst", "problem": "no sidecar (incomplete)"}],
    )
    assert protocol.parse_listing(listing.to_json().encode()) == listing


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'"x"',
        b"{}",
        b'{"host": "a"}',
        b'{"host": "a", "archives": 5}',
        b"\xff",
        b'{"host": "a", "archives": [], "protocol": NaN}',
    ],
)
def test_anything_else_is_not_a_listing(raw):
    with pytest.raises(ValueError):
        protocol.parse_listing(raw)


def test_unusable_entries_that_are_not_mappings_are_dropped():
    raw = b'{"host": "a", "archives": [], "unusable": [1, "x", {"name": "n"}]}'
    assert protocol.parse_listing(raw).unusable == [{"name": "n"}]


def test_archives_that_are_not_mappings_are_counted_unusable():
    """helper-134 F5: ``archives`` was kept as any list, and ``check`` called ``.get``
    on a client's ``1`` there (exit 70, no later host checked)."""
    raw = b'{"host": "a", "archives": [1, "x", null, ["a"], {"name": "n"}], "unusable": []}'
    listing = protocol.parse_listing(raw)
    assert listing.archives == [{"name": "n"}]
    assert listing.unusable == [{"name": "?", "problem": "4 entries of archives not objects"}]
    with pytest.raises(ValueError, match="not a list answer"):
        protocol.parse_listing(b'{"host": "a", "archives": "abc"}')


def test_verbs_are_the_six():
    assert sorted(Verb) == ["fetched", "full", "list", "lock", "send", "session"]


def test_the_listing_says_which_protocol_the_client_speaks():
    """1 from a client before delta archives (it sends none) or any nonsense; the server
    sends ``full`` only to 2 or later, ``fetched <archive> deltas`` only to 3 or later."""
    wire = json.loads(Listing("web1", "1.2.3", None, [], []).to_json())
    assert protocol.parse_listing(json.dumps(wire).encode()).protocol == 5
    for value in (None, "2", True, 0, -1, 10**9, 2.5):
        wire["protocol"] = value
        assert protocol.parse_listing(json.dumps(wire).encode()).protocol == 1
    del wire["protocol"]
    assert protocol.parse_listing(json.dumps(wire).encode()).protocol == 1


def test_the_list_answer_on_the_wire():
    """The keys older and newer peers rely on: changing one breaks mixed fleets."""
    wire = json.loads(Listing("web1", "1.2.3", None, [], []).to_json())
    assert wire == {
        "protocol": 5,
        "host": "web1",
        "pullback_version": "1.2.3",
        "lock": None,
        "archives": [],
        "unusable": [],
    }
    assert protocol.lock_answer(None) == '{"lock": null}'
    assert protocol.FETCHED_ANSWER == '{"ok": true}'


def test_a_list_answer_is_bounded_in_entries_and_depth():
    many = {"host": "web1", "archives": [{}] * 600, "unusable": [{}] * 401}
    with pytest.raises(ValueError, match="more than 1000 archives"):
        protocol.parse_listing(json.dumps(many).encode())
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="not a list answer"):
        protocol.parse_listing(b'{"host": "web1", "archives": ' + deep + b"}")


def test_session_frames_round_trip_and_refuse_anything_else():
    """A session answer's first line: ``ok <length>`` or ``refused <words>``; a client's
    bytes otherwise are a ValueError, never a guess."""
    assert protocol.parse_frame(protocol.ok_frame(0)) == protocol.Frame(0)
    assert protocol.parse_frame(protocol.ok_frame(123456789)) == protocol.Frame(123456789)
    refused = protocol.parse_frame(protocol.refused_frame("no archive x.tar.zst"))
    assert refused.refused == "no archive x.tar.zst"
    for line in (
        b"ok 12",  # no newline
        b"ok -1\n",
        b"ok 01\n",
        b"ok 1 2\n",
        b"ok 12345678901234567890\n",  # past 2**63
        b"OK 1\n",
        b"maybe 1\n",
        b"ok \n",
        b"ok " + b"1" * 700 + b"\n",
        b"refused " + b"x" * protocol.MAX_FRAME + b"\n",
    ):
        with pytest.raises(ValueError):
            protocol.parse_frame(line)


def test_a_refusal_frame_is_one_bounded_line_of_printable_ascii():
    line = protocol.refused_frame("bad\nline\x1b[31m \u00e9" + "y" * 5000)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert len(line) <= len(b"refused \n") + protocol.MAX_REFUSAL <= protocol.MAX_FRAME
    assert all(32 <= b < 127 for b in line[:-1])
    assert protocol.parse_frame(line).refused.startswith("bad?line?[31m ?yyy")


def test_session_is_a_request_of_one_word():
    assert protocol.parse_request("session") == protocol.SESSION
    for text in ("session now", "session ", "sessions"):
        with pytest.raises(protocol.Refused):
            protocol.parse_request(text)
