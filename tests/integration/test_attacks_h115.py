"""Outside review (h115): docs/monitoring.md, docs/exit-codes.md, docs/reliability.md,
docs/server.md, docs/scaling.md and the two man pages, read literally by an administrator
new to pullback, against the real commands.

A promise that did not hold was ``xfail(strict=True)`` until mended (none is marked now);
every test asserts what the documents say. Real sshd on loopback ports, a real SMTP sink, real
restic (tests/helpers); the merged status files of ``status --merge`` are written by hand
as another (damaged or hostile) server would leave them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pullback.common.clock import iso, utc_now
from pullback.server.cli import main as server_main
from tests.helpers.fleet import Fleet
from tests.helpers.smtp import SmtpSink
from tests.helpers.sshd import make_key
from tests.helpers.status_servers import make_server, stored

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd and the client run as root here"),
]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
SERVER = str(BIN / "pullback-server")
CLIENT = str(BIN / "pullback-client")


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


# ---- one fleet, four hosts, one pull: the unhappy paths of a first night --------------


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """web1 fine; web2's authorized_keys holds another key (wrong SSH key); web3's sshd
    is down (unreachable); web4 never published an archive. One pull, with a metrics
    file, a status page and a summary mail (send: always)."""
    root = tmp_path_factory.mktemp("h115-night")
    smtp = SmtpSink().start()
    fleet = Fleet(root / "fleet")
    fleet.smtp_port = smtp.port
    try:
        for name in ("web1", "web2", "web3", "web4"):
            fleet.add_host(name)
        for name in ("web1", "web2", "web3"):
            fleet.hosts[name].make_archive()
        other = make_key(root / "other_ed25519")
        auth = fleet.hosts["web2"].sshd.root / "authorized_keys"
        ours = Path(f"{fleet.key}.pub").read_text().split()[1]
        auth.write_text(auth.read_text().replace(ours, Path(f"{other}.pub").read_text().split()[1]))
        fleet.hosts["web3"].sshd.stop()
        (root / "www").mkdir()
        fleet.write_config(
            metrics_file=str(root / "pullback.prom"), status_page=str(root / "www" / "index.html")
        )
        pull = fleet.server("pull")
        yield {
            "fleet": fleet,
            "pull": pull,
            "smtp": smtp,
            "metrics": (root / "pullback.prom").read_text(),
            "page": (root / "www" / "index.html").read_text(),
        }
    finally:
        fleet.stop()
        smtp.stop()


def test_a_first_night_with_three_unhappy_hosts_exits_1_and_says_each_cause(night):
    """exit-codes.md: pull 1 when a host failed (unreachable, refused key); the others
    are still pulled; a client with no archive is a skip that needs attention."""
    pull = night["pull"]
    assert pull.returncode == 1, pull.stderr
    log = pull.stderr
    assert "[web2]" in log and "refused the server's key" in log
    assert "[web3]" in log and "cannot connect to 127.0.0.1 port" in log
    assert "[web4] skipped: the client has no archive to fetch" in log
    assert "[web1] stored:" in log
    status = json.loads((night["fleet"].state / "status.json").read_text())
    assert status["hosts"]["web1"]["last_result"] == "stored"
    assert {status["hosts"][h]["last_result"] for h in ("web2", "web3")} == {"failed"}
    assert status["hosts"]["web4"]["last_result"] == "skipped"
    # monitoring.md: configured, each with its max_age in seconds (default 36h)
    assert status["configured"]["web4"] == {"max_age": 36 * 3600.0}


def test_status_exits_1_naming_stale_and_failed_hosts(night):
    done = night["fleet"].server("status")
    assert done.returncode == 1
    assert "stale (no snapshot within max_age): web2, web3, web4" in done.stderr
    assert "failed (the last pull): web2, web3" in done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:3] == ["HOST", "STATE", "LAST"]  # no SERVER column without --merge
    assert "DATABASES" in header and "REPOSITORY" in header


def test_status_check_is_critical_for_never_stored_hosts(night):
    done = night["fleet"].server("status", "--check")
    assert done.returncode == 2
    (line,) = done.stdout.splitlines()
    assert line.startswith(
        "PULLBACK CRITICAL - stale: web2, web3, web4; last pull failed: web2, web3; "
        "1 of 4 hosts ok | "
    )
    assert "hosts=4 ok=1" in line


def test_status_check_says_the_last_pull_failed_for_a_stale_host_too(night):
    done = night["fleet"].server("status", "--check")
    words, perfdata = done.stdout.split(" | ", 1)
    assert "failed" in words
    assert "failed=2" in perfdata


def test_status_notes_name_the_host_once(night):
    done = night["fleet"].server("status")
    assert "web2: web2:" not in done.stdout
    assert "web3: web3:" not in done.stdout


def test_the_metrics_file_holds_only_documented_metrics_with_their_meaning(night):
    text = night["metrics"]
    table = _doc("monitoring.md").split("| server metric |")[1].split("| client metric |")[0]
    documented = set(re.findall(r"`(pullback_[a-z_]+)`", table))
    written = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert written <= documented, written - documented
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['pullback_stale{host="web1"}'] == 0
    for host in ("web2", "web3", "web4"):
        assert values[f'pullback_stale{{host="{host}"}}'] == 1  # never stored: 1
        assert f'pullback_newest_snapshot_timestamp_seconds{{host="{host}"}}' not in values
    assert values['pullback_last_attempt_ok{host="web2"}'] == 0
    assert values['pullback_last_attempt_ok{host="web4"}'] == 1  # a skip is no failure
    assert values['pullback_last_result{result="skipped",host="web4"}'] == 1
    assert values['pullback_pull_cut_short{host="web1"}'] == 0
    assert abs(values["pullback_metrics_timestamp_seconds"] - time.time()) < 600
    # the drill metric is absent while a host has nothing to drill yet
    assert not any(k.startswith("pullback_last_verify_ok") for k in values)


def test_the_summary_mail_names_failed_and_stale_hosts_in_its_subject(night):
    subjects = [str(m["subject"]).strip() for m in night["smtp"].messages]
    assert subjects == ["[pullback] 2 of 4 hosts FAILED: web2 (stale), web3 (stale); STALE: web4"]


def test_the_status_page_escapes_and_shows_every_host(night):
    page = night["page"]
    for host in ("web1", "web2", "web3", "web4"):
        assert host in page
    assert "<script" not in page.lower()


# ---- a pull cut short: 75, 143, status, publish --if-failed ---------------------------


def _journal(fleet: Fleet) -> dict | None:
    path = fleet.state / "pull-in-progress.json"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    return None


def _gauges(path: Path, name: str) -> dict[str, float]:
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_a_second_pull_exits_75_and_a_sigterm_143_then_status_and_publish_say_so(fleet):
    """exit-codes.md 75 (pull), 143 (pull); monitoring.md *A pull running now, or cut
    short*: status exit 1, --check WARNING, publish --if-failed sets
    pullback_pull_cut_short 1; the next pull clears it."""
    host = fleet.add_host("web1")
    metrics = fleet.root / "pullback.prom"
    fleet.write_config(metrics_file=str(metrics))
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    host.make_archive()
    host.sshd.pause()  # the banner never comes: the pull waits on connect_timeout (10s)
    try:
        first = fleet.server_popen("pull")
        deadline = time.monotonic() + 8
        while _journal(fleet) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        running = fleet.server("status")
        assert running.returncode == 0, running.stderr
        assert f"a pull is running (pid {first.pid}" in running.stdout
        second = fleet.server("pull")
        assert second.returncode == 75
        assert f"pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 143
    finally:
        host.sshd.resume()
    cut = fleet.server("status")
    assert cut.returncode == 1
    assert "stopped by SIGTERM while connecting" in cut.stdout
    check = fleet.server("status", "--check")
    assert check.returncode == 1 and check.stdout.startswith("PULLBACK WARNING")
    published = fleet.server(
        "publish", "--if-failed", env={"SERVICE_RESULT": "exit-code", "EXIT_STATUS": "143"}
    )
    assert published.returncode == 0, published.stderr
    assert _gauges(metrics, "pullback_pull_cut_short") == {
        'pullback_pull_cut_short{host="web1"}': 1.0
    }
    assert _gauges(metrics, "pullback_pull_cut_short_started_timestamp_seconds")
    again = fleet.server("pull")
    assert again.returncode == 0, again.stderr
    assert "stopped by SIGTERM" in again.stderr or "was stopped" in again.stderr
    assert _gauges(metrics, "pullback_pull_cut_short") == {
        'pullback_pull_cut_short{host="web1"}': 0.0
    }
    assert not _gauges(metrics, "pullback_pull_cut_short_started_timestamp_seconds")


def test_publish_if_failed_after_a_success_does_not_read_the_configuration(tmp_path):
    """pullback-server(8) publish: nothing when $SERVICE_RESULT is success (the
    configuration is not read), but a SIGTERM's 143 is not a success."""
    missing = str(tmp_path / "nowhere.yaml")
    env = {**os.environ, "SERVICE_RESULT": "success", "EXIT_STATUS": "0"}
    quiet = subprocess.run(
        [SERVER, "-c", missing, "publish", "--if-failed"], env=env, capture_output=True, text=True
    )
    assert quiet.returncode == 0 and not quiet.stdout
    env["EXIT_STATUS"] = "143"
    read = subprocess.run(
        [SERVER, "-c", missing, "publish", "--if-failed"], env=env, capture_output=True, text=True
    )
    assert read.returncode == 2, read.stderr
    assert "nowhere.yaml" in read.stderr


# ---- status --merge: another server's file, damaged or hostile -----------------------


@pytest.fixture
def backup1(tmp_path):
    server = make_server(tmp_path, "backup1", {"web1": None})
    server.pulled(stored("web1", 2))
    return server


def _status(server, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = server_main(["--config", str(server.path), "status", *args])
    return code, out.getvalue(), err.getvalue()


def _merged(tmp_path: Path, data, name: str = "backup2.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))
    return path


def _ago(hours: float) -> str:
    return iso(utc_now() - dt.timedelta(hours=hours))


def test_merge_shows_the_other_servers_hosts_with_a_server_column(backup1, tmp_path):
    other = _merged(
        tmp_path,
        {
            "server": "backup2",
            "updated": _ago(0.2),
            "configured": {"db3": {"max_age": 3600}, "db9": {"max_age": 3600}},
            "hosts": {"db3": {"last_result": "stored", "newest_snapshot": _ago(0.5)}},
        },
    )
    code, out, err = _status(backup1, "--merge", str(other))
    assert code == 1  # db9: configured there, never pulled: stale
    header = out.splitlines()[0].split()
    assert header[:2] == ["HOST", "SERVER"]
    assert re.search(r"^db3\s+backup2\s+ok\b", out, re.M)
    assert re.search(r"^db9\s+backup2\s+stale\b", out, re.M)
    assert "backup2: status file written 12m00s ago (" in out
    assert "stale (no snapshot within max_age): db9 (backup2)" in err
    code, out, _ = _status(backup1, "--merge", str(other), "--json")
    shown = json.loads(out)
    assert {"servers", "rows", "duplicates"} <= set(shown)
    assert {r["host"] for r in shown["rows"]} == {"web1", "db3", "db9"}


def test_merge_judges_by_the_recorded_max_age_and_names_this_servers_hosts_first(backup1, tmp_path):
    backup1.pulled(stored("web1", 40))  # past the default 36h: stale here
    other = _merged(
        tmp_path,
        {
            "server": "backup2",
            "configured": {"aa1": {"max_age": 3600}, "aa2": {}},
            "hosts": {
                "aa1": {"last_result": "stored", "newest_snapshot": _ago(2)},
                "aa2": {
                    "last_result": "stored",
                    # (half an hour more: two days exactly read "47h59m ahead" once a
                    # loaded machine took a second to the status)
                    "newest_snapshot": iso(utc_now() + dt.timedelta(days=2, minutes=30)),
                },
            },
        },
    )
    code, out, _ = _status(backup1, "--merge", str(other), "--check")
    assert code == 2
    assert re.match(
        r"PULLBACK CRITICAL - stale: web1 \([^)]+\), aa1 \(backup2\), aa2 \(backup2\);", out
    )
    code, out, _ = _status(backup1, "--merge", str(other))
    assert re.search(r"^aa2\s+backup2\s+stale\s+stored\s+2d00h ahead", out, re.M)


def test_a_host_on_two_servers_and_the_own_file_merged_by_mistake(backup1, tmp_path):
    code, out, err = _status(backup1, "--merge", str(backup1.status))
    assert code == 1
    assert f"({backup1.status})" in out  # named with its path too
    assert "on more than one server (each host belongs in one server.yaml): web1:" in err
    code, out, _ = _status(backup1, "--merge", str(backup1.status), "--check")
    assert code == 1 and out.startswith("PULLBACK WARNING - on more than one server: web1")


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "directory",
        "fifo",
        "too-large",
        "too-many-values",
        "too-many-hosts",
        "not-json",
        "nan",
        "not-a-status-file",
        "escape-in-a-host-name",
        "nested-too-deep",
    ],
)
def test_a_merged_file_that_cannot_be_read_is_named_with_its_reason(backup1, tmp_path, kind):
    path = tmp_path / "bad.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "too-large":
        path.write_text(json.dumps({"hosts": {}, "junk": "x" * (32 << 20)}))
    elif kind == "too-many-values":
        path.write_text(json.dumps({"hosts": {}, "junk": [0] * 1_500_001}))
    elif kind == "too-many-hosts":
        path.write_text(json.dumps({"hosts": {f"h{i}": {} for i in range(10_001)}}))
    elif kind == "not-json":
        path.write_text("{hosts: ")
    elif kind == "nan":
        path.write_text('{"hosts": {"db3": {"duration": NaN}}}')
    elif kind == "not-a-status-file":
        path.write_text(json.dumps({"hosts": ["db3"]}))
    elif kind == "escape-in-a-host-name":
        path.write_text(json.dumps({"hosts": {"db3\x1b[2J\x1b]0;owned\x07": {}}}))
    elif kind == "nested-too-deep":
        path.write_text('{"hosts": {"db3": {"reason": ' + "[" * 5000 + "]" * 5000 + "}}}")
    started = time.monotonic()
    code, out, err = _status(backup1, "--merge", str(path))
    assert time.monotonic() - started < 10
    assert code == 1
    assert f"cannot read the merged status file {path}: " in err
    assert "(its hosts are unknown)" in err
    assert "\x1b" not in out + err
    code, out, _ = _status(backup1, "--merge", str(path), "--check")
    assert code == 3 and out.startswith("PULLBACK UNKNOWN - cannot read: ")
    assert "\x1b" not in out


def test_a_stale_host_beats_an_unreadable_merged_file_in_check(backup1, tmp_path):
    backup1.pulled(stored("web1", 40))
    code, out, _ = _status(backup1, "--merge", str(tmp_path / "missing.json"), "--check")
    assert code == 2
    assert re.match(r"PULLBACK CRITICAL - stale: web1 \([^)]+\); cannot read: \S*missing.json", out)


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\r\nforged line\u202e<script>alert(1)</script>|x" * 5


def test_hostile_words_are_escaped_cut_and_never_reach_the_terminal_or_page(backup1, tmp_path):
    entry = {
        key: HOSTILE
        for key in ("last_result", "reason", "verify_result", "maintain_result", "maintain_reason")
    }
    entry.update(
        problem=True,
        warnings=[HOSTILE] * 40,
        failed_services=[HOSTILE] * 3,
        maintain_failed=[HOSTILE],
        guard_hold={"reason": HOSTILE},
        verify_failed_snapshot={"id": HOSTILE, "at": HOSTILE, "summary": HOSTILE},
        history=[{"result": HOSTILE}] * 50,
        copy={"result": "failed", "reason": HOSTILE, "guard_hold": {"reason": HOSTILE}},
        newest_snapshot=_ago(1),
    )
    path = _merged(
        tmp_path,
        {"server": HOSTILE, "hosts": {"db3": entry}, "outputs": {"problems": [HOSTILE] * 40}},
        name="ev\x1b[31mil|.json",
    )
    page = tmp_path / "fleet.html"
    for args in ((), ("--check",), ("--json",), ("--html", str(page))):
        code, out, err = _status(backup1, "--merge", str(path), *args)
        words = out + err
        for raw in ("\x1b", "\x9b", "\r", "\x07", "\u202e"):
            assert raw not in words, (args, raw)
        assert (
            "forged line"
            not in "".join(  # no line of output starts with it
                line[:11] for line in words.splitlines()
            )
        )
        if args == ("--check",):
            assert code == 1 and out.count("\n") == 1
            assert out.split(" | ")[0].count("|") == 0 and "¦" in out
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "\x1b" not in html
    row = max(len(line) for line in _status(backup1, "--merge", str(path))[1].splitlines())
    assert row < 2000  # every text cut at 300 characters


def test_a_merged_file_of_unprintable_characters_stays_within_the_memory_said(backup1, tmp_path):
    path = _merged(
        tmp_path,
        {
            "server": "backup2",
            "hosts": {"db3": {"last_result": "failed", "reason": "\u0085" * 8_000_000}},
        },
    )
    assert path.stat().st_size < 32 << 20
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            SERVER,
            "-c",
            str(backup1.path),
            "status",
            "--check",
            "--merge",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.startswith("PULLBACK CRITICAL")  # db3: never stored
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    assert peak_kib < 400 * 1024, f"peak {peak_kib // 1024} MiB"


def test_a_merged_file_of_emoji_and_one_of_many_keys_stay_near_the_memory_said(backup1, tmp_path):
    """monitoring.md: the worst shape measured, one 32 MiB string of a 4-byte character,
    ~326 MB (here much less: it is printable and never escaped)."""
    path = _merged(
        tmp_path,
        {"server": "backup2", "hosts": {"db3": {"reason": "\U0001f600" * 8_000_000}}},
    )
    done = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            SERVER,
            "-c",
            str(backup1.path),
            "status",
            "--check",
            "--merge",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert int(done.stderr.strip().splitlines()[-1]) < 400 * 1024


def test_ten_thousand_merged_hosts_keep_the_check_line_and_complaints_short(backup1, tmp_path):
    hosts = {f"h{i:05d}": {"last_result": "failed", "reason": "R" * 400} for i in range(10_000)}
    path = _merged(tmp_path, {"server": "backup2", "hosts": hosts})
    started = time.monotonic()
    code, out, err = _status(backup1, "--merge", str(path), "--check")
    assert time.monotonic() - started < 20
    assert code == 2 and len(out) < 1000 and "and 9990 more" in out
    code, out, err = _status(backup1, "--merge", str(path))
    assert len(err.splitlines()) <= 4 and max(len(line) for line in err.splitlines()) < 1000


# ---- the man pages and --help, the global options --------------------------------------


def _synopsis(man: Path) -> dict[str, set[str]]:
    text = man.read_text()
    block = text.split(".SH SYNOPSIS")[1].split(".SH DESCRIPTION")[0]
    found = {}
    for part in block.split(".br"):
        names = [
            n for n in re.findall(r"^\.B ([a-z-]+)\s*$", part, re.M) if not n.startswith("pullback")
        ]
        if names:
            flags = re.findall(r"\\fB((?:\\-){2}[a-z\\-]+)\\fR", part)
            found[names[0]] = {f.replace("\\", "") for f in flags}
    return found


@pytest.mark.parametrize("program", ["pullback-server", "pullback-client"])
def test_every_command_and_flag_of_the_man_synopsis_is_in_help_and_back(program):
    commands = _synopsis(DOCS / "man" / f"{program}.8")
    top = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True).stdout
    listed = set(re.findall(r"^    ([a-z][a-z-]+)", top, re.M))
    assert set(commands) == listed
    for command, flags in commands.items():
        shown = subprocess.run(
            [str(BIN / program), command, "--help"], capture_output=True, text=True
        ).stdout
        options = set(re.findall(r"^  (?:-\w(?: [A-Z]+)?, )?(--[a-z][a-z-]+)", shown, re.M))
        options -= {"--help", "--config", "--verbose", "--quiet"}
        assert flags - {"--config"} == options, command


def test_config_verbose_and_quiet_are_taken_after_the_command(backup1):
    done = subprocess.run(
        [SERVER, "status", "--check", "-c", str(backup1.path), "-v", "-q"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout.startswith("PULLBACK OK")
    missing = subprocess.run(
        [SERVER, "-c", "/nonexistent/h115.yaml", "status", "--check"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 3 and missing.stdout.startswith("PULLBACK UNKNOWN")
    wrong = subprocess.run([SERVER, "status", "--no-such-flag"], capture_output=True, text=True)
    assert wrong.returncode == 2


def test_the_man_pages_exit_status_lists_the_signal_codes_of_exit_codes_md():
    client = (DOCS / "man" / "pullback-client.8").read_text().split(".SH EXIT STATUS")[1]
    server = (DOCS / "man" / "pullback-server.8").read_text().split(".SH EXIT STATUS")[1]
    client = client.split(".SH FILES")[0]
    server = server.split(".SH FILES")[0]
    assert "129" in client
    assert "143" in server and "130" in server


def test_client_metrics_and_status_file_say_what_monitoring_md_says(tmp_path):
    from tests.helpers.client import ClientSandbox

    box = ClientSandbox(tmp_path / "c", hostname="web1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").write_text("a")
    box.add_service("app", f"service: {{name: app}}\nfiles: {{paths: [{data}]}}\n")
    box.add_service("bad", "service: {name: bad}\nfiles: {paths: [/nonexistent/h115]}\n")
    box.write_config(metrics_file=str(tmp_path / "client.prom"))
    run = box.cli("run")
    assert run.returncode == 1  # exit-codes.md: a service failed, the archive published
    assert len(box.published()) == 1
    text = (tmp_path / "client.prom").read_text()
    table = _doc("monitoring.md").split("| client metric |")[1].split("\n\n")[0]
    documented = set(re.findall(r"`(pullback_client_[a-z_]+)`", table))
    written = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] not in ("#", "")
    }
    assert written <= documented
    assert "pullback_client_last_run_ok 0" in text
    assert 'pullback_client_service_ok{service="bad"} 0' in text
    status = json.loads((box.archives / ".client-status.json").read_text())
    assert {
        "last_run",
        "last_run_ok",
        "error",
        "duration",
        "archive",
        "services",
        "reported_run",
    } <= set(status)
    assert set(status["reported_run"]) == {"pid", "at", "token"}
    check = box.cli("check", "--json")
    assert check.returncode == 2
    assert {"hostname", "problems", "warnings", "notes", "deltas"} <= set(json.loads(check.stdout))


def test_an_hourly_run_with_every_host_fresh_is_quiet_but_rewrites_the_metrics(fleet):
    """monitoring.md: --if-due skips a fresh host quietly (last_checked), sends no mail
    whatever send: says, and rewrites the metrics file every hour."""
    smtp = SmtpSink().start()
    try:
        fleet.smtp_port = smtp.port
        host = fleet.add_host("web1")
        metrics = fleet.root / "pullback.prom"
        fleet.write_config(metrics_file=str(metrics))
        host.make_archive()
        assert fleet.server("pull").returncode == 0
        assert len(smtp.messages) == 1
        before = _gauges(metrics, "pullback_metrics_timestamp_seconds")
        time.sleep(1.1)
        quiet = fleet.server("pull", "--if-due")
        assert quiet.returncode == 0, quiet.stderr
        assert "skipped: fresh" in quiet.stderr
        assert len(smtp.messages) == 1  # send: always, yet no mail
        assert _gauges(metrics, "pullback_metrics_timestamp_seconds") != before
        entry = json.loads((fleet.state / "status.json").read_text())["hosts"]["web1"]
        assert entry["last_result"] == "stored" and "last_checked" in entry
    finally:
        smtp.stop()


def test_a_hung_host_fails_after_connect_timeout_in_words(fleet):
    """reliability.md: host hung (no answer at all): fails after ssh.connect_timeout,
    exit 1, "timed out"; the other hosts go on."""
    hung = fleet.add_host("web1")
    good = fleet.add_host("web2")
    fleet.write_config(ssh={"connect_timeout": "3s"})
    hung.make_archive()
    good.make_archive()
    hung.sshd.pause()
    try:
        started = time.monotonic()
        done = fleet.server("pull", timeout=120)
        took = time.monotonic() - started
    finally:
        hung.sshd.resume()
    assert done.returncode == 1
    assert "[web1]" in done.stderr and "timed out" in done.stderr
    assert "[web2] stored:" in done.stderr
    assert took < 60
