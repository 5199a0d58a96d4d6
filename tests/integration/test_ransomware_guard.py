"""The ransomware guard on real restic and borg repositories: a normal day is forgotten
by the policy, a day that looks encrypted holds forget (every snapshot kept, status exits
1, the metric says so) until ``pullback-server release``."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.fleet import Fleet

pytestmark = pytest.mark.integration

FILES = 150


@pytest.mark.parametrize("backend", ["restic", "borg"])
def test_an_encrypted_looking_day_holds_forget_and_a_normal_one_does_not(tmp_path, backend):
    fleet = Fleet(tmp_path, backend=backend)
    try:
        web = fleet.add_host("web1")
        metrics = tmp_path / "metrics.prom"
        fleet.write_config(retention={"keep_last": 2}, metrics_file=str(metrics))
        documents = {f"docs/{i:03}.txt": f"document {i}\n".encode() * 40 for i in range(FILES)}

        def day(files: dict[str, bytes]) -> None:
            web.make_archive(files)
            result = fleet.server("pull")
            assert result.returncode == 0, result.stderr

        def maintain(rc: int) -> str:
            result = fleet.server("maintain", "--no-verify")
            assert result.returncode == rc, result.stdout + result.stderr
            return result.stdout + result.stderr

        day(documents)
        day({"docs/000.txt": b"edited\n", "docs/new.txt": b"a new file\n"})  # a normal day
        said = maintain(0)
        assert ": normal" in said, said
        assert len(fleet.snapshots("web1")) == 2

        # a rebuilt server unpacks the whole archive into a new staging tree: the same
        # content, every file written anew (borg 1.2 says "modified", 0 bytes, of each:
        # an outside walk saw every borg host held after a rebuild)
        shutil.rmtree(fleet.state / "staging")
        day({})
        said = maintain(0)
        assert ": normal" in said and "not judged: the data" in said, said
        assert len(fleet.snapshots("web1")) == 2

        # ransomware: every document rewritten with random bytes of the same size
        day({name: os.urandom(len(data)) for name, data in documents.items()})
        said = maintain(1)
        assert "forget held: snapshot" in said and "changed or removed" in said, said
        assert "pullback-server release web1" in said
        assert len(fleet.snapshots("web1")) == 3, "nothing forgotten while held"
        status = fleet.server("status")
        assert status.returncode == 1
        assert "forget held by the ransomware guard: web1" in status.stderr
        assert 'pullback_forget_held{host="web1"} 1' in metrics.read_text()

        # a later normal day does not end the hold
        day({"docs/001.txt": b"another edit\n"})
        said = maintain(1)
        assert "forget held since" in said
        assert len(fleet.snapshots("web1")) == 4

        released = fleet.server("release", "web1")
        assert released.returncode == 0, released.stderr
        assert "released the hold" in released.stdout
        said = maintain(0)
        assert "forgot 2" in said, said
        assert len(fleet.snapshots("web1")) == 2
        assert fleet.server("status").returncode == 0
        assert 'pullback_forget_held{host="web1"} 0' in metrics.read_text()
    finally:
        fleet.stop()
