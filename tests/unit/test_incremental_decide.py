"""The client's choice between a full archive and a delta, and chain retention: a delta
only onto the newest archive the file cache describes, whole, of this host, not from the
future; a full whenever doubt exists; retention never lets a stray archive end the chain."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pullback.client.config import ClientConfig, IncrementalConfig, IncrementalMode
from pullback.client.incremental import decide
from pullback.common.archive import directory
from pullback.common.archive.filecache import FileCache

NOW = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


def config(tmp_path: Path, mode: IncrementalMode = IncrementalMode.ON) -> ClientConfig:
    return ClientConfig(
        path=tmp_path / "client.yaml",
        hostname="web1",
        archive_dir=tmp_path / "archives",
        work_dir=tmp_path / "work",
        lock_dir=tmp_path / "run",
        service_dirs=(),
        plugin_dirs=(),
        compression="zstd",
        compression_level=None,
        keep_last=3,
        keep_days=7,
        min_free_space=0,
        verify="checksums",
        fetched_keep=1,
        min_interval=0,
        email=None,
        notify=None,
        metrics_file=None,
        incremental=IncrementalConfig(mode, 7 * 86400, 0.5, tmp_path / "cache"),
    )


def publish(
    cfg: ClientConfig, day: float, base: str | None = None, host="web1", size=1000, status="ok"
):
    """An archive of ``day`` (hours before NOW when negative: days otherwise)."""
    when = NOW - dt.timedelta(days=day)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    name = f"{host}-{stamp}.tar.zst"
    cfg.archive_dir.mkdir(parents=True, exist_ok=True)
    (cfg.archive_dir / name).write_bytes(b"x" * size)
    archive = {
        "name": name,
        "size": size,
        "sha256": "a" * 64,
        "compression": "zstd",
        "kind": "full" if base is None else "delta",
        "manifest_sha256": f"{int(day * 24):064x}",
    }
    if base is not None:
        archive["base"] = {"name": base, "manifest_sha256": f"{int(day * 24) + 24:064x}"}
    side = {
        "format": 1 if base is None else 2,
        "host": host,
        "stamp": stamp,
        "created": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pullback_version": "t",
        "status": status,
        "archive": archive,
        "services": [],
    }
    (cfg.archive_dir / f"{name}.json").write_text(json.dumps(side))
    return name, f"{int(day * 24):064x}"


def cache_of(cfg: ClientConfig, name: str, manifest: str) -> FileCache:
    cache = FileCache(cfg.incremental.cache_dir, cfg.hostname)
    cache.start()
    cache.finish(name, manifest)
    cache.swap()
    return FileCache(cfg.incremental.cache_dir, cfg.hostname)


def test_auto_waits_for_a_server_that_applies_deltas(tmp_path):
    """``auto``: a full archive (with its reason) until the serve endpoint left the
    server's mark; a delta from then on. ``false`` never makes one."""
    from pullback.common.archive import directory

    cfg = config(tmp_path, IncrementalMode.AUTO)
    full, _ = publish(cfg, 3)
    newest, manifest = publish(cfg, 2, base=full, size=100)
    decision = decide(cfg, cache_of(cfg, newest, manifest), NOW)
    assert not decision.delta and "no server has said yet" in decision.reason
    (cfg.archive_dir / directory.MARKS_DIR).mkdir(exist_ok=True)
    directory.mark_server_applies_deltas(cfg.archive_dir)
    assert decide(cfg, cache_of(cfg, newest, manifest), NOW).base.name == newest
    off = config(tmp_path, IncrementalMode.OFF)
    assert not decide(off, cache_of(off, newest, manifest), NOW).delta


def test_a_delta_onto_the_newest_archive_the_cache_describes(tmp_path):
    cfg = config(tmp_path)
    full, _ = publish(cfg, 3)
    newest, manifest = publish(cfg, 2, base=full, size=100)
    decision = decide(cfg, cache_of(cfg, newest, manifest), NOW)
    assert decision.delta and decision.base.name == newest


def test_doubt_makes_a_full(tmp_path):
    cfg = config(tmp_path)
    full, _ = publish(cfg, 3)
    newest, manifest = publish(cfg, 2, base=full, size=100)
    asked = cache_of(cfg, newest, manifest)
    assert "asked" in decide(cfg, asked, NOW, forced="asked").reason
    assert asked.base is not None  # the old cache is read all the same: its rows serve a full
    assert not decide(cfg, cache_of(cfg, full, "f" * 64), NOW).delta  # describes another
    (cfg.archive_dir / full).write_bytes(b"short")  # the chain's full truncated
    decision = decide(cfg, cache_of(cfg, newest, manifest), NOW)
    assert not decision.delta and "damaged" in decision.reason
    cfg2 = config(tmp_path / "old")
    old_full, manifest = publish(cfg2, 8)
    decision = decide(cfg2, cache_of(cfg2, old_full, manifest), NOW)
    assert not decision.delta and "full_every" in decision.reason


def test_a_stray_archive_from_the_future_neither_counts_nor_ends_the_chain(tmp_path):
    cfg = config(tmp_path)
    full, _ = publish(cfg, 3)
    newest, manifest = publish(cfg, 2, base=full, size=100)
    stray, _ = publish(cfg, -3)  # three days ahead
    publish(cfg, 1, host="web1old")  # made under another host name
    assert decide(cfg, cache_of(cfg, newest, manifest), NOW).delta
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert full not in removed and newest not in removed
    publish(cfg, 0.5)  # a new full of this host: what is older goes
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert {full, newest} <= set(removed) and stray not in removed


def test_the_newest_archive_in_which_every_service_succeeded_keeps_its_chain(tmp_path):
    """A database dump that fails from some day on: the newest full archive and the
    deltas since all lack it. The newest good archive (a delta) and the chain it needs
    (its full, the deltas between) stay, as classic retention keeps the newest good
    archive; once a good archive follows, the old chain goes."""
    cfg = config(tmp_path)
    old_full, _ = publish(cfg, 5)
    good, _ = publish(cfg, 4, base=old_full)
    partial_full, _ = publish(cfg, 3, status="partial")
    partial_delta, _ = publish(cfg, 2, base=partial_full, status="partial")
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert removed == []
    older, _ = publish(cfg, 6)  # an older full than the good one's chain: it goes
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert removed == [older]
    # the failure goes on for weeks: only the good chain and the newest full's stay
    for day in (1.9, 1.8):
        last_full, _ = publish(cfg, day, status="partial")
        publish(cfg, day - 0.05, base=last_full, status="partial")
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert partial_full in removed and partial_delta in removed and len(removed) == 4
    assert {old_full, good, last_full} <= set(directory_names(cfg))
    publish(cfg, 1, base=last_full)  # good again: the newest full's chain suffices
    removed = directory.apply_chain_retention(cfg.archive_dir, cfg.hostname, NOW)
    assert set(removed) == {old_full, good}


def directory_names(cfg: ClientConfig) -> list[str]:
    return [a.name for a in directory.list_archives(cfg.archive_dir)]


def test_classic_retention_drops_deltas_a_newer_full_supersedes(tmp_path):
    """Deltas switched off (``enabled: false``): classic retention keeps ``keep_last``
    archives, and the deltas left from before, which a newer full archive supersedes,
    go rather than fill those places (an outside tester saw two deltas kept whose full
    archive was gone; another, that the superseded deltas took ``keep_last`` places and
    pushed the old full archive out). A delta newer than every full stays."""
    cfg = config(tmp_path)
    full, _ = publish(cfg, 5)
    first, _ = publish(cfg, 4, base=full)
    second, _ = publish(cfg, 3, base=first)
    newer_full, _ = publish(cfg, 2)
    newest_delta, _ = publish(cfg, 1, base=newer_full)
    removed = directory.apply_retention(cfg.archive_dir, keep_last=3, keep_days=0, now=NOW)
    assert set(removed) == {first, second}
    assert directory_names(cfg) == [full, newer_full, newest_delta]


def test_classic_retention_keeps_a_kept_deltas_chain_and_ignores_a_stray_from_the_future(
    tmp_path,
):
    """The newest archive in which every service succeeded is a delta, and today's full
    has a failed service: the delta stays with the archives it is built on (keep_last
    alone deleted them, leaving a delta nothing can use). A good full dated a year ahead
    (a clock once wrong) takes neither the newest good archive's place nor makes the
    real ones superseded (both found by an outside review)."""
    import json

    for stray in (False, True):
        cfg = config(tmp_path / str(stray), IncrementalMode.OFF)
        full, _ = publish(cfg, 5)
        first, _ = publish(cfg, 4, base=full)
        good, _ = publish(cfg, 3, base=first)
        today, _ = publish(cfg, 0.5, status="partial")
        if stray:
            ahead, _ = publish(cfg, -365)
            side = cfg.archive_dir / f"{ahead}.json"
            data = json.loads(side.read_text())
            data["archive"]["manifest_sha256"] = "b" * 64
            side.write_text(json.dumps(data))
        removed = directory.apply_retention(cfg.archive_dir, keep_last=2, keep_days=0, now=NOW)
        assert removed == [], stray
        assert {full, first, good, today} <= set(directory_names(cfg))


def test_a_chain_with_lean_deltas_ends_when_no_server_says_it_applies_them(tmp_path):
    """Going back to 0.2 (upgrading.md): the mark removed, the next delta was format 2
    on the lean delta the 0.2 server had passed over, and that server failed it ("its
    base ... is not on the client (or its sidecar is not usable)"; helper-166 F3). Such a
    chain now ends in a full archive; with the mark, lean deltas go on."""
    cfg = config(tmp_path)
    full, _ = publish(cfg, 3)
    lean, manifest = publish(cfg, 2, base=full, size=100)
    side = cfg.archive_dir / f"{lean}.json"
    side.write_text(side.read_text().replace('"format": 2', '"format": 3'))
    (cfg.archive_dir / directory.MARKS_DIR).mkdir(exist_ok=True)
    directory.mark_server_applies_lean_deltas(cfg.archive_dir)
    assert decide(cfg, cache_of(cfg, lean, manifest), NOW).delta
    (cfg.archive_dir / directory.MARKS_DIR / directory.APPLIES_LEAN_DELTAS).unlink()
    decision = decide(cfg, cache_of(cfg, lean, manifest), NOW)
    assert not decision.delta and "holds lean deltas" in decision.reason, decision.reason
