"""Outside review h134: the server's and the client's reporting surfaces (mails, pings,
the status page, the metrics, status.json and ``status``) against a hostile client,
broken mail and monitoring endpoints, and careless configuration.

A promise that did not hold was a strict expected failure asserting what the documents
say (docs/monitoring.md, docs/exit-codes.md, the schemas' descriptions); helper-135
mended all nine (F1 ... F9), and each such test now asserts the mended behaviour. An
attack that held is a plain test. Real processes throughout: the CLIs as subprocesses, real sshd and
restic (tests/helpers/fleet.py), a real SMTP server (aiosmtpd, tests/helpers/smtp.py), a
real HTTP endpoint (tests/helpers/http.py) or a raw socket server written here where an
endpoint must misbehave byte by byte. Findings: /tmp/h134/FINDINGS.md (F1 ... Fn).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.helpers.client import ClientSandbox
from tests.helpers.fleet import Fleet
from tests.helpers.smtp import RefusesGone, SmtpSink, self_signed_certificate
from tests.helpers.sshd import free_port

pytestmark = pytest.mark.integration


# ---- helpers ------------------------------------------------------------------------


class DribblingHttp:
    """An HTTP endpoint that answers every request a byte every 0.4 s for ``seconds``
    (no single read ever waits long), then ends its answer (200 OK). Counts requests."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.requests = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/ping"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            ends = time.monotonic() + self.seconds
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ":
                conn.sendall(bytes([byte]))
                time.sleep(0.4)
            while time.monotonic() < ends and not self.closed.is_set():
                conn.sendall(b"a")
                time.sleep(0.4)
            conn.sendall(b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def _status(fleet: Fleet) -> dict:
    return json.loads((fleet.state / "status.json").read_text())


def _client_box(tmp_path: Path, **config) -> ClientSandbox:
    """A client with a good files service and one whose command fails."""
    box = ClientSandbox(tmp_path / "client", hostname="web1")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("good data\n")
    box.add_service("good", f"service: {{name: good}}\nfiles: {{paths: [{data}]}}\n")
    box.add_service("bad", 'service: {name: bad}\ncommand: {dump: ["exit 3"]}\n')
    box.write_config(**config)
    return box


# ---- F1: a ping's timeout bounds each read, not the ping ----------------------------


def test_a_dribbling_ping_endpoint_is_cut_at_notify_timeout(fleet):
    """docs/monitoring.md: "Each ping or message gets one try with the timeout";
    _notify.yaml: timeout is the "Longest wait for each ping or message". An endpoint
    that drips its answer for 30 s (no read ever waits 2 s) must cost a pull at most
    about 2 x 2 s more than the pull itself, and the pings count as not delivered."""
    host = fleet.add_host("web1")
    host.make_archive()
    endpoint = DribblingHttp(30)
    try:
        fleet.write_config(notify={"healthchecks": endpoint.url, "timeout": "2s"})
        started = time.monotonic()
        pulled = fleet.server("pull", timeout=200)
        took = time.monotonic() - started
    finally:
        endpoint.close()
    assert _status(fleet)["hosts"]["web1"]["last_result"] == "stored", pulled.stderr
    assert endpoint.requests >= 1  # (the pings reached it)
    # the pull itself takes a few seconds here; two pings of at most 2 s each
    assert took < 25, f"the pull took {took:.0f}s with notify.timeout 2s"
    assert pulled.returncode == 1 and "not delivered" in pulled.stderr, pulled.stderr[-2000:]


# ---- F2: a line break in the mail's header settings -----------------------------------


def test_a_line_break_in_subject_prefix_is_refused_or_harmless_on_the_client(tmp_path, smtp, http):
    """What YAML's folded scalar gives (``subject_prefix: >`` then ``[backup]``): either
    ``check`` refuses it (exit 2, bad configuration), or a failed run reports as
    docs/exit-codes.md says (exit 1, the failure mail sent, the /fail ping sent)."""
    email = {
        "smtp": {"host": "127.0.0.1", "port": smtp.port, "timeout": "5s"},
        "from": "pb@x.test",
        "to": ["root@x.test"],
        "subject_prefix": "[backup]\n",
    }
    box = _client_box(
        tmp_path, email=email, notify={"healthchecks": f"{http.url}/hc", "timeout": "5s"}
    )
    checked = box.cli("check")
    if checked.returncode == 2:  # refused, in plain words: mended one way
        assert "subject_prefix" in checked.stdout + checked.stderr
        return
    made = box.cli("run")
    assert made.returncode == 1, made.stderr[-3000:]  # a service failed: not a bug (70)
    assert len(smtp.messages) == 1, "no failure mail"
    assert "/hc/fail" in http.paths(), f"no failure ping: {http.paths()}"


def test_a_line_break_in_subject_prefix_is_refused_by_server_check(fleet, smtp):
    """The server's side of F2: either ``check`` refuses the setting, or the summary
    mail goes out."""
    fleet.smtp_port = smtp.port
    host = fleet.add_host("web1")
    host.make_archive()
    fleet.write_config(email={"subject_prefix": "[backup]\n"})
    checked = fleet.server("check")
    if checked.returncode == 2:
        assert "subject_prefix" in checked.stdout + checked.stderr
        return
    pulled = fleet.server("pull")
    assert _status(fleet)["hosts"]["web1"]["last_result"] == "stored"
    assert len(smtp.messages) == 1, pulled.stderr[-3000:]
    assert pulled.returncode == 0, pulled.stderr[-3000:]


# ---- F3: one malformed value in status.json ------------------------------------------


def test_a_malformed_time_in_status_json_does_not_stop_the_pulls_reports(fleet, smtp):
    """An administrator's edit (a date without its time) in the host's entry: the next
    pull still records itself and mails, and ``status --check`` answers in the plugin
    range 0-3 (docs/exit-codes.md; 70 is a bug's)."""
    fleet.smtp_port = smtp.port
    host = fleet.add_host("web1")
    host.make_archive()
    fleet.write_config(metrics_file=str(fleet.root / "pullback.prom"))
    assert fleet.server("pull").returncode == 0
    path = fleet.state / "status.json"
    status = json.loads(path.read_text())
    status["hosts"]["web1"]["last_verified"] = "2026-12-06"
    path.write_text(json.dumps(status))
    first_attempt = status["hosts"]["web1"]["last_attempt"]
    host.make_archive()
    pulled = fleet.server("pull")
    assert len(fleet.snapshots("web1")) == 2  # (the store itself happened either way)
    assert pulled.returncode != 70, pulled.stderr[-3000:]
    assert _status(fleet)["hosts"]["web1"]["last_attempt"] != first_attempt
    assert len(smtp.messages) == 2
    checked = fleet.server("status", "--check")
    assert checked.returncode in (0, 1, 2, 3), checked.stderr[-2000:]
    assert checked.stdout.startswith("PULLBACK "), checked.stdout


# ---- F4: a refused recipient among accepted ones -------------------------------------


def test_a_refused_recipient_among_others_is_said(fleet):
    """The summary to ``[ops@x.test, gone@x.test]`` where the SMTP server refuses gone@:
    ops@ gets it; the refusal must be said (named in the log, an output not delivered:
    exit 1), not dropped."""
    handler = RefusesGone()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        fleet.smtp_port = port
        host = fleet.add_host("web1")
        host.make_archive()
        fleet.write_config(email={"to": ["ops@x.test", "gone@x.test"]})
        pulled = fleet.server("pull")
    finally:
        controller.stop()
    assert handler.delivered == [["ops@x.test"]]  # (the accepted one got it)
    said = [line for line in pulled.stderr.splitlines() if "gone@x.test" in line]
    # ("summary mailed to ops@x.test, gone@x.test" is what is logged today)
    assert any("refused" in line or "550" in line for line in said), said
    assert pulled.returncode == 1


# ---- F5: a hostile listing and `pullback-server check` -------------------------------

EVIL_SERVE = """
import json, os, subprocess, sys
config = sys.argv[1]
request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
argv = [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"]
if request.startswith("session"):
    sys.stderr.write("refused: unknown request\\n")
    sys.exit(2)
if request.startswith("list"):
    data = json.loads(subprocess.run(argv, capture_output=True).stdout)
    data["archives"] += [1, "x", None, ["a"]]
    sys.stdout.write(json.dumps(data) + "\\n")
    sys.exit(0)
os.execv(sys.executable, argv)
"""


def test_a_listing_with_a_non_object_archive_does_not_crash_check(fleet, tmp_path):
    """A client whose ``list`` answer holds ``1`` among its archives: its own problem
    (or ignored), and the next host in server.yaml is still checked."""
    script = tmp_path / "evil_serve.py"
    script.write_text(EVIL_SERVE)
    evil = fleet.add_host("evil")
    evil.make_archive()
    good = fleet.add_host("good")
    good.make_archive()
    evil.sshd.stop()
    evil.sshd.forced_command = f"{sys.executable} {script} {evil.client.config}"
    evil.sshd.start()
    checked = fleet.server("check")
    assert checked.returncode in (0, 1), checked.stderr[-2000:]
    assert "good: reachable" in checked.stdout, checked.stdout
    pulled = fleet.server("pull")  # (held: pull passes the odd entries over)
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert len(fleet.snapshots("evil")) == 1


# ---- F6: a sidecar stamp that is no time ---------------------------------------------


def test_a_sidecar_stamp_that_is_no_time_is_passed_over(fleet):
    """One digit of an older archive's sidecar damaged (month 13); the client then makes
    a good, newer archive. The damaged one is passed over with a warning naming it (as a
    broken sidecar is), the newer one is stored, and no "internal error" is reported."""
    host = fleet.add_host("web1")
    host.make_archive()
    assert fleet.server("pull").returncode == 0
    damaged = host.make_archive()
    side = damaged.with_name(damaged.name + ".json")
    data = json.loads(side.read_text())
    data["stamp"] = data["stamp"][:4] + "13" + data["stamp"][6:]
    side.write_text(json.dumps(data, indent=2))
    newer = host.make_archive()
    pulled = fleet.server("pull")
    entry = _status(fleet)["hosts"]["web1"]
    assert "internal error" not in entry["reason"], entry["reason"]
    assert entry["last_result"] == "stored" and entry["archive"] == newer.name, entry
    assert any(damaged.name in w for w in entry["warnings"]), entry["warnings"]
    assert pulled.returncode == 0, pulled.stderr[-2000:]


# ---- F7: a disabled host -------------------------------------------------------------


def test_a_disabled_host_is_not_a_critical_for_ever(fleet):
    """A host kept in server.yaml, disabled, so that its snapshots stay restorable: its
    last snapshot passes max_age. The live fleet is fine: ``--check`` must not be
    CRITICAL because of it, and ``status`` must say it is disabled rather than stale."""
    live = fleet.add_host("web1")
    live.make_archive()
    old = fleet.add_host("old")
    old.make_archive()
    assert fleet.server("pull").returncode == 0
    fleet.host_extra["old"] = {"enabled": False, "max_age": "1s"}
    fleet.write_config()
    time.sleep(2.5)
    checked = fleet.server("status", "--check")
    shown = fleet.server("status")
    assert checked.returncode != 2, checked.stdout
    assert "disabled" in shown.stdout + shown.stderr, shown.stdout


# ---- F8: docs/server.md on an unreachable SMTP server ---------------------------------


def test_server_md_says_what_an_unreachable_smtp_server_changes(fleet):
    """The behaviour (held, as monitoring.md says) and the sentence of server.md."""
    host = fleet.add_host("web1")
    host.make_archive()
    fleet.smtp_port = free_port()  # nothing listens there
    fleet.write_config()
    pulled = fleet.server("pull")
    assert _status(fleet)["hosts"]["web1"]["last_result"] == "stored"
    assert pulled.returncode == 1
    assert _status(fleet)["outputs"]["problems"] == ["summary mail not sent"]
    docs = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    text = " ".join(docs.read_text().split())
    assert "An unreachable SMTP server is logged and changes nothing else" not in text


# ---- what held ------------------------------------------------------------------------

HOSTILE_WORDS = (
    "<script>alert(1)</script>\x1b[2J\x1b]0;owned\x07\n[good] stored everything\r\u202e"
    '"} 1\npullback_stale{host="x"} 0 \\ \udcff'
)
"""HTML, terminal escapes (clear screen, window title), a forged log line, a bidi
override, a forged Prometheus sample and a byte that was not UTF-8."""

WORDS_SERVE = """
import json, os, subprocess, sys
config = sys.argv[1]
words = json.loads(open(sys.argv[2]).read())
request = os.environ.get("SSH_ORIGINAL_COMMAND", "")
argv = [sys.executable, "-m", "pullback.client.cli", "--config", config, "serve"]
if request.startswith("session"):
    sys.stderr.write("refused: unknown request\\n")
    sys.exit(2)
if request.startswith("list"):
    data = json.loads(subprocess.run(argv, capture_output=True).stdout)
    data["unusable"] = [{"name": "old" + words, "problem": words * 3}] * 40
    for entry in data["archives"]:
        for service in entry["sidecar"]["services"]:
            for task in service["tasks"]:
                task["warnings"] = [words] * 20
    sys.stdout.write(json.dumps(data) + "\\n")
    sys.exit(0)
os.execv(sys.executable, argv)
"""


def _raw(text: str, html: bool = False) -> list[str]:
    """What must never reach an output as it is (``html``: a page or a mail's HTML)."""
    found = [c for c in ("\x1b", "\x07", "\r", "\u202e", "\udcff") if c in text]
    return found + (["<script>"] if html and "<script>" in text else [])


def test_a_hostile_clients_words_reach_no_output_raw(fleet, smtp, tmp_path):
    """Held: a client lists 40 unusable archives and 20 warnings per task, each word
    holding HTML, terminal escapes, a forged line, a bidi override and a forged
    Prometheus sample. The archive is stored; the pull's log, status.json, the status
    page, both parts of the summary mail, ``status`` and the metrics (parsed by
    prometheus_client) carry none of it raw, bounded."""
    from prometheus_client.parser import text_string_to_metric_families

    script = tmp_path / "words_serve.py"
    script.write_text(WORDS_SERVE)
    fleet.smtp_port = smtp.port
    host = fleet.add_host("evil")
    host.make_archive()
    host.sshd.stop()
    words = tmp_path / "words.json"
    words.write_text(json.dumps(HOSTILE_WORDS))  # (ASCII: the surrogate as \\udcff)
    host.sshd.forced_command = f"{sys.executable} {script} {host.client.config} {words}"
    host.sshd.start()
    page, prom = fleet.root / "www" / "index.html", fleet.root / "pullback.prom"
    fleet.write_config(metrics_file=str(prom), status_page=str(page))
    pulled = fleet.server("pull")
    status_text = (fleet.state / "status.json").read_text()
    entry = json.loads(status_text)["hosts"]["evil"]
    assert entry["last_result"] == "stored", pulled.stderr[-2000:]
    assert entry["problem"] is True  # (archives passed over: needs attention)
    assert not _raw(pulled.stderr) and not _raw(json.loads(status_text)["hosts"]["evil"]["reason"])
    assert not any(line.startswith("[good]") for line in pulled.stderr.splitlines())
    assert all(not _raw(w) and len(w) <= 500 for w in entry["warnings"])
    assert len(entry["warnings"]) <= 25
    html = page.read_text()
    assert not _raw(html, html=True) and "&lt;script&gt;" in html
    (message,) = smtp.messages
    text, mail_html = (part.replace("\r\n", "\n") for part in smtp.bodies(message))
    assert not _raw(text) and not _raw(mail_html, html=True)
    assert not _raw(str(message["Subject"]))
    assert not any(line.startswith("[good]") for line in text.splitlines())
    assert len(text) < 64 << 10 and len(mail_html) < 128 << 10
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    stale = [s for s in families["pullback_stale"].samples if s.name == "pullback_stale"]
    assert [(s.labels, s.value) for s in stale] == [({"host": "evil"}, 0.0)]
    shown = fleet.server("status")
    assert not _raw(shown.stdout + shown.stderr)


def test_an_smtp_login_refused_keeps_the_backup_and_says_so_without_the_password(fleet, tmp_path):
    """Held: a wrong SMTP password. The host is stored, the pull ends within seconds,
    exits 1, the log says the login was refused (naming the user), status.json records
    the unsent mail, and the password appears in no output."""
    from aiosmtpd.smtp import AuthResult

    def refuse(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=False, handled=False)

    secret = "Smtp-Pa55-h134-xyz"
    password_file = tmp_path / "smtp.pass"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o600)
    sink = SmtpSink().start(authenticator=refuse, auth_require_tls=False)
    try:
        fleet.smtp_port = sink.port
        host = fleet.add_host("web1")
        host.make_archive()
        fleet.write_config(
            email={
                "smtp": {
                    "host": "127.0.0.1",
                    "port": sink.port,
                    "username": "pullback",
                    "password_file": str(password_file),
                    "timeout": "5s",
                }
            }
        )
        started = time.monotonic()
        pulled = fleet.server("pull")
        took = time.monotonic() - started
    finally:
        sink.stop()
    status_text = (fleet.state / "status.json").read_text()
    assert json.loads(status_text)["hosts"]["web1"]["last_result"] == "stored"
    assert pulled.returncode == 1 and took < 60
    assert "refused the login of pullback" in pulled.stderr, pulled.stderr[-2000:]
    assert "summary mail not sent" in status_text
    assert secret not in pulled.stderr + pulled.stdout + status_text
    assert sink.messages == []


def test_a_starttls_handshake_that_dribbles_is_cut_at_smtp_timeout(tmp_path):
    """Held: a server whose STARTTLS handshake comes a byte every 0.25 s (each read well
    within the timeout) is cut at ``smtp.timeout`` (2 s), in words."""
    import ssl

    from pullback.common import mail

    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    sink = SmtpSink().start(tls_context=context, require_starttls=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def pump(src, dst, drip):
        try:
            while data := src.recv(1 if drip[0] else 65536):
                dst.sendall(data)
                if drip[0]:
                    time.sleep(0.25)
        except OSError:
            pass

    def client_side(conn, upstream, drip):
        try:
            while data := conn.recv(65536):
                if b"STARTTLS" in data.upper():
                    drip[0] = True
                upstream.sendall(data)
        except OSError:
            pass

    def proxy():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", sink.port))
        drip = [False]
        threading.Thread(target=client_side, args=(conn, upstream, drip), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, conn, drip), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    config = mail.SmtpConfig(
        "127.0.0.1", listener.getsockname()[1], "starttls", None, None, cert, 2.0
    )
    started = time.monotonic()
    try:
        with pytest.raises(mail.MailError, match=r"timed out|did not answer"):
            mail.send(config, mail.build_message("pb@x.test", ["o@x.test"], "s", "t"))
    finally:
        listener.close()
        sink.stop()
    assert time.monotonic() - started < 2 + 1.5


def test_an_hourly_run_of_fresh_hosts_still_rewrites_the_metrics_time(fleet):
    """Held (docs/monitoring.md: "the hourly timer rewrites it even when every host is
    fresh"): ``pull --if-due`` that finds every host fresh rewrites the metrics file,
    ``pullback_metrics_timestamp_seconds`` advancing, so the documented
    PullbackMetricsNotWritten rule sees a server that stopped, not one that is idle."""
    from prometheus_client.parser import text_string_to_metric_families

    prom = fleet.root / "pullback.prom"
    host = fleet.add_host("web1")
    host.make_archive()
    fleet.write_config(metrics_file=str(prom))
    assert fleet.server("pull").returncode == 0

    def written() -> float:
        families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
        return families["pullback_metrics_timestamp_seconds"].samples[0].value

    before = written()
    time.sleep(1.1)
    quiet = fleet.server("pull", "--if-due")
    assert quiet.returncode == 0, quiet.stderr
    assert written() > before


# ---- F9: an SMTP password that is not ASCII ------------------------------------------


def test_a_non_ascii_smtp_password_is_a_mail_problem_not_a_crash(tmp_path, http):
    """``pässwörd€``: either it is sent (UTF-8, as RFC 6531 servers and most others
    accept) or the run says the mail could not be sent; a failed run still exits 1 and
    pings /fail, and no character of the password reaches the log."""
    from aiosmtpd.smtp import AuthResult

    def accept(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=True)

    sink = SmtpSink().start(authenticator=accept, auth_require_tls=False)
    password_file = tmp_path / "smtp.pass"
    password_file.write_text("pässwörd€-h134\n")
    password_file.chmod(0o600)
    try:
        email = {
            "smtp": {
                "host": "127.0.0.1",
                "port": sink.port,
                "username": "pullback",
                "password_file": str(password_file),
                "timeout": "5s",
            },
            "from": "pb@x.test",
            "to": ["root@x.test"],
        }
        box = _client_box(
            tmp_path, email=email, notify={"healthchecks": f"{http.url}/hc", "timeout": "5s"}
        )
        made = box.cli("run")
    finally:
        sink.stop()
    assert made.returncode == 1, made.stderr[-3000:]  # (a service failed), not 70
    assert "/hc/fail" in http.paths(), http.paths()
    assert "\\xe4" not in made.stderr and "ä" not in made.stderr
