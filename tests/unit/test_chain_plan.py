"""server.chain.plan: which archives a pull applies, as a pure function of the listing and
what staging holds; and the client's choice between a full archive and a delta."""

from __future__ import annotations

import json

import pytest

from pullback.common.archive import sidecar as sidecars
from pullback.common.archive.baseindex import IndexedTree
from pullback.common.protocol import Listing
from pullback.server import chain

HOST = "web1"


def side(day: int, base: int | None = None) -> dict:
    """The sidecar of the archive of ``day``, a delta on ``base``'s when given."""
    data = {
        "format": 1 if base is None else 2,
        "host": HOST,
        "stamp": f"202611{day:02d}T030000Z",
        "created": f"2026-11-{day:02d}T03:00:00Z",
        "pullback_version": "test",
        "status": "ok",
        "archive": {
            "name": name(day),
            "size": 100,
            "sha256": "a" * 64,
            "compression": "zstd",
            "kind": "full" if base is None else "delta",
            "manifest_sha256": f"{day:064x}",
        },
        "services": [],
    }
    if base is not None:
        data["archive"]["base"] = {"name": name(base), "manifest_sha256": f"{base:064x}"}
    return data


def name(day: int) -> str:
    return f"{HOST}-202611{day:02d}T030000Z.tar.zst"


def listing(*sides: dict) -> Listing:
    archives = [{"name": s["archive"]["name"], "size": 100, "sidecar": s} for s in sides]
    return Listing(HOST, "test", None, archives)


def held(day: int) -> IndexedTree:
    return IndexedTree(name(day), f"{day:064x}")


def names(plan: chain.Plan) -> list[int]:
    return [int(s.stamp[6:8]) for s in plan.archives]


def parsed(data: dict) -> sidecars.Sidecar:
    return sidecars.from_data(json.loads(json.dumps(data)))


def test_a_full_archive_is_applied_alone():
    plan = chain.plan(parsed(side(1)), listing(side(1)), HOST, held(0))
    assert names(plan) == [1] and plan.from_full


def test_a_delta_onto_what_staging_holds():
    days = [side(1), side(2, 1), side(3, 2)]
    plan = chain.plan(parsed(days[2]), listing(*days), HOST, held(2))
    assert names(plan) == [3] and not plan.from_full
    missed = chain.plan(parsed(days[2]), listing(*days), HOST, held(1))
    assert names(missed) == [2, 3] and not missed.from_full


@pytest.mark.parametrize("what", [None, held(9), IndexedTree(name(2), "f" * 64)])
def test_without_the_base_the_chain_starts_at_its_full(what):
    days = [side(1), side(2, 1), side(3, 2)]
    plan = chain.plan(parsed(days[2]), listing(*days), HOST, what)
    assert names(plan) == [1, 2, 3] and plan.from_full


def test_the_newest_already_in_staging_is_only_stored():
    days = [side(1), side(2, 1)]
    plan = chain.plan(parsed(days[1]), listing(*days), HOST, held(2))
    assert plan.store_only and names(plan) == [2]


def test_a_broken_chain_says_why():
    days = [side(2, 1), side(3, 2)]  # the full is gone
    plan = chain.plan(parsed(days[1]), listing(*days), HOST, None)
    assert plan.archives == [] and "base web1-20261101T030000Z.tar.zst is not on" in plan.problem


def test_a_base_that_keeps_failing_its_checksum_breaks_the_chain():
    days = [side(1), side(2, 1), side(3, 2)]
    plan = chain.plan(parsed(days[2]), listing(*days), HOST, held(1), frozenset({name(2)}))
    assert "did not match its checksum" in plan.problem
    # the base staging holds is not fetched again, whatever its checksum did
    plan = chain.plan(parsed(days[2]), listing(*days), HOST, held(2), frozenset({name(2)}))
    assert names(plan) == [3]


def test_a_base_with_another_manifest_is_not_the_base():
    days = [side(1), side(2, 1)]
    days[0]["archive"]["manifest_sha256"] = "e" * 64
    plan = chain.plan(parsed(days[1]), listing(*days), HOST, None)
    assert "is not the one a delta names" in plan.problem


def test_a_base_newer_than_its_delta_cannot_make_a_loop():
    days = [side(3, 2), side(2, 3)]
    plan = chain.plan(parsed(days[0]), listing(*days), HOST, None)
    assert "not older" in plan.problem


def test_a_chain_of_another_host_or_a_bad_sidecar_is_not_followed():
    days = [side(1), side(2, 1)]
    days[0]["host"] = "web2"
    assert chain.plan(parsed(days[1]), listing(*days), HOST, None).problem
    days[0]["host"] = HOST
    days[0]["archive"]["sha256"] = "not hex"
    assert chain.plan(parsed(days[1]), listing(*days), HOST, None).problem


def test_a_chain_longer_than_the_limit_is_refused():
    days = [side(1)] + [side(d, d - 1) for d in range(2, 29)]
    old = chain.MAX_CHAIN
    try:
        chain.MAX_CHAIN = 10
        plan = chain.plan(parsed(days[-1]), listing(*days), HOST, None)
    finally:
        chain.MAX_CHAIN = old
    assert "longer than 10" in plan.problem
