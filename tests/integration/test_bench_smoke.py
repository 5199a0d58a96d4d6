"""The benchmark harness runs (at a tiny scale) so it cannot rot. No timing is asserted."""

from __future__ import annotations

from bench import dataset
from bench.run import report, run
from bench.transfer import measure


def test_transfer_bench_runs(tmp_path):
    result = measure(size_mib=2, repeat=1, root=tmp_path)
    assert result["size_mb"] == 2.1
    assert result["scp_s"] > 0 and result["pullback_s"] > 0
    assert len(result["runs"]["scp"]) == len(result["runs"]["pullback"]) == 1


def test_dataset_is_deterministic_and_mutates_one_percent(tmp_path):
    a = dataset.make(tmp_path / "a", scale=0.002, seed=5)
    b = dataset.make(tmp_path / "b", scale=0.002, seed=5)
    assert a["bytes"] == b["bytes"] and a["small_files"] == 40
    assert (tmp_path / "a" / "dump.sql").read_bytes() == (tmp_path / "b" / "dump.sql").read_bytes()
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    changed = dataset.mutate(tmp_path / "a", seed=9)["changed_files"]
    after = {p: p.read_bytes() for p in before}
    assert sum(before[p] != after[p] for p in before) == changed + 1  # + the dump


def test_whole_harness_runs_at_a_tiny_scale(tmp_path):
    results = run(tmp_path, scale=0.002, repeat=1, rss_scales=[0.002])
    assert set(results["rows"]) == {"pack", "transfer", "full pull", "next day"}
    assert results["peak"]["0.002"]["pullback_mb"] > 0
    text = report(results)
    assert "full pull" in text and "seed design" in text
