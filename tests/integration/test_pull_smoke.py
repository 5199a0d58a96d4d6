"""Smoke: one host, one pull, restic."""

from tests.helpers.fleet import Fleet


def test_one_host_one_pull(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        host = fleet.add_host("web1")
        host.make_archive({"a.txt": b"x"})
        result = fleet.server("pull", "--summary")
        print(result.stdout, result.stderr)
        assert result.returncode == 0
        assert len(fleet.snapshots("web1")) == 1
    finally:
        fleet.stop()
