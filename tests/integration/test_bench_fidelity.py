"""The metadata-fidelity benchmark runs (edge tree, two ways) so it cannot rot, and pullback
keeps what it promises to keep on it."""

from __future__ import annotations

import os
import shutil

import pytest

from bench.fidelity import KINDS, report, run

TOOLS = ("restic", "rsync", "tar", "setcap", "getcap", "setfacl", "getfacl", "setfattr")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="owners, set-id bits, device nodes need root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS), reason=f"needs all of {', '.join(TOOLS)}"
    ),
]


def test_edge_tree_kept_and_dropped_by_design(tmp_path):
    results = run(tmp_path / "work", ["edge"], ways=["pullback (restic)", "GNU tar"])

    edge = results["trees"]["edge"]
    assert set(edge["ways"]) == {"pullback (restic)", "GNU tar"}
    pullback = edge["ways"]["pullback (restic)"]
    assert "error" not in pullback, pullback.get("error")
    labels = {kind: cell["label"] for kind, cell in pullback["kinds"].items()}
    assert set(labels) == set(KINDS)
    for kind in ("content", "set-uid/set-gid", "file capability", "sparse file"):
        assert labels[kind] == "kept", (kind, pullback["kinds"][kind]["detail"])
    assert labels["device node"] == "dropped (by design)"
    assert labels["long path"] == "dropped (by design)"  # skipped alone, with a warning
    lost = {k: v for k, v in labels.items() if v not in ("kept", "dropped (by design)")}
    assert lost == {}, lost
    assert pullback["rsync"]["lines"] >= 1  # the oracle sees the device node missing
    assert edge["ways"]["GNU tar"]["kinds"]["content"]["label"] == "kept"

    text = report(results)
    assert "kind" in text and "pullback (restic)" in text and "GNU tar" in text
    assert "device node" in text and "dropped (by design)" in text
    assert not (tmp_path / "work").exists()  # cleaned up
