"""The benchmark scripts run (at a tiny size) so they cannot rot. No timing is asserted."""

from __future__ import annotations

from bench.transfer import measure


def test_transfer_bench_runs(tmp_path):
    result = measure(size_mib=2, repeat=1, root=tmp_path)
    assert result["size_mb"] == 2.1
    assert result["scp_s"] > 0 and result["pullback_s"] > 0
    assert len(result["runs"]["scp"]) == len(result["runs"]["pullback"]) == 1
