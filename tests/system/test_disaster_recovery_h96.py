"""helper-96's outside walk of docs/disaster-recovery.md, in a booted Debian 12 root, with
the unhappy paths: a step run twice or out of order, the bundle's secrets not unpacked,
a wrong (stale) copy password, a short vs a full host name, a copy that is gone, one
missing a snapshot, one with a damaged pack (before and after the rebuild), and every
password kept out of argv, the journal and what the commands print.

The root's sshd listens on port 2296 here (never on the host's port 22): server.yaml
names the port. The six defects it found are mended (each test below passes); the others
assert what held. The tests run in file order on one root: each puts back what it damaged."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.system.test_disaster_recovery import LOSS, PAGE, SETUP, sh, stamps, steps

PORT = 2296
COPY = "/srv/pullback-copy"
WRAPPER = """#!/bin/sh
# helper-96: every argv restic is run with, for the test that no password is on one
printf '%s\\n' "$*" >> /var/lib/pullback/h96-argv.log 2>/dev/null || true
exec /usr/bin/restic "$@"
"""


@pytest.fixture(scope="module")
def machine(root, built):
    for deb in built["debs"]:
        shutil.copy2(deb, root.path / "root" / deb.name)
    # the root shares the host's network: its sshd must not take the host's port 22
    root.write("/etc/ssh/sshd_config.d/h96-port.conf", f"Port {PORT}\n")
    root.run(["apt-get", "update", "-q"])
    root.run(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server age restic",
        timeout=1200,
    )
    root.write("/usr/local/bin/restic", WRAPPER, mode=0o755)
    return root


@pytest.fixture(scope="module")
def world(machine):
    """A working server as the page sets it up (copy, first copy, key, bundle), with
    three snapshots in the primary and the copy."""
    page = steps()
    setup = SETUP.replace("address: 127.0.0.1}", f"address: 127.0.0.1, port: {PORT}}}")
    assert setup != SETUP
    sh(machine, setup)
    host = sh(machine, "hostname -s").stdout.strip()
    sh(machine, page["copy-config"])
    first = sh(machine, page["first-copy"])
    sh(machine, page["admin-key"])
    exported = sh(machine, page["export"])
    for _ in range(2):
        sh(machine, "systemctl start pullback-client.service && pullback-server pull")
    copied = sh(machine, "pullback-server copy")
    passwords = {
        name: sh(machine, f"cat /etc/pullback/{name}").stdout.strip()
        for name in ("repository.pass", "copy.pass")
    }
    return {
        "page": page,
        "host": host,
        "first": first,
        "exported": exported,
        "copied": copied,
        "passwords": passwords,
        "said": [first.stdout, first.stderr, exported.stdout, exported.stderr],
    }


def said(world, result) -> str:
    """What a command printed, kept for the final test that no password was shown."""
    world["said"] += [result.stdout, result.stderr]
    return result.stdout + result.stderr


def copy_snapshots(machine, host: str) -> list[dict]:
    listed = sh(
        machine,
        f"restic --no-cache --no-lock -r {COPY}/{host} --password-file /etc/pullback/copy.pass"
        " snapshots --json",
    )
    return sorted(json.loads(listed.stdout), key=lambda s: s["time"])


def largest_pack(machine, repo: str) -> str:
    return sh(
        machine, f"find {repo}/data -type f -printf '%s %p\\n' | sort -n | tail -1 | cut -d' ' -f2"
    ).stdout.strip()


DAMAGE = "cp -p {pack} /root/h96-pack.bak && chmod u+w {pack} && " + (
    "printf 'h96h96h96h96h96h96h96h96' | dd of={pack} bs=1 seek=$(( $(stat -c %s {pack}) / 2 ))"
    " conv=notrunc status=none"
)
MEND = "cp -p /root/h96-pack.bak {pack}"


# -- the working server ------------------------------------------------------------------


def test_first_copy_shows_the_copy_column_as_the_page_says(machine, world):
    first = world["first"].stdout
    row = next(line for line in first.splitlines() if line.startswith(f"{world['host']} "))
    assert "COPY" in first and "copied" in row and "drilled" in row, first
    assert "pullback-recovery/secrets.tar.age" in world["exported"].stdout
    assert "the copy holds 3" in world["copied"].stdout, world["copied"].stdout
    assert len(copy_snapshots(machine, world["host"])) == 3


def test_a_second_copy_section_is_refused_at_load_naming_both_lines(machine, world):
    step = world["page"]["copy-config"].replace("head -c 32 /dev/urandom", "true")
    assert step != world["page"]["copy-config"]
    sh(machine, "cp -p /etc/pullback/server.yaml /root/")
    try:
        sh(machine, step.replace("> /etc/pullback/copy.pass", "> /dev/null"))
        again = sh(machine, "pullback-server copy", check=False)
        out = said(world, again)
        assert again.returncode == 2, out
        assert "/etc/pullback/server.yaml:6: copy: duplicate key (first given on line 3)" in out
    finally:
        sh(machine, "cp -p /root/server.yaml /etc/pullback/")


def test_the_copy_config_step_run_twice_keeps_the_copies_readable(machine, world):
    sh(machine, "cp -p /etc/pullback/server.yaml /etc/pullback/copy.pass /root/")
    try:
        sh(machine, world["page"]["copy-config"])
        # the loader refuses the second copy: key (the test above); the admin removes it
        sh(machine, "cp -p /root/server.yaml /etc/pullback/")
        again = sh(machine, "pullback-server copy", check=False)
        world["copy_config_twice"] = said(world, again)
        print("\ncopy-config twice:", again.returncode, again.stdout, again.stderr)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        sh(machine, "cp -p /root/server.yaml /root/copy.pass /etc/pullback/")
        sh(machine, "pullback-server copy")


def test_a_copy_missing_an_older_snapshot_is_a_problem(machine, world):
    host = world["host"]
    oldest = copy_snapshots(machine, host)[0]["id"]
    moved = f"{COPY}/{host}/snapshots/{oldest}"
    sh(machine, f"mv {moved} /root/h96-snapshot")
    try:
        ran = sh(machine, "pullback-server copy", check=False)
        status = sh(machine, "pullback-server status", check=False)
        world["missing_snapshot"] = said(world, ran) + said(world, status)
        assert ran.returncode == 1 and "the copy lost 1 snapshot(s)" in ran.stdout, ran.stdout
        # copied again from the primary, which still holds it: whole again, and "ok" next
        assert len(copy_snapshots(machine, host)) == 3
    finally:
        if len(copy_snapshots(machine, host)) == 3:
            sh(machine, "rm /root/h96-snapshot")  # put back, it would be there twice
        else:
            sh(machine, f"mv /root/h96-snapshot {moved}")
        sh(machine, "pullback-server copy")


def test_a_damaged_copy_fails_its_drill_until_one_passes(machine, world):
    host = world["host"]
    pack = largest_pack(machine, f"{COPY}/{host}")
    sh(machine, DAMAGE.format(pack=pack))
    try:
        ran = sh(machine, "pullback-server copy --verify", check=False)
        out = said(world, ran)
        print("\ndamaged copy:", ran.returncode, out)
        assert ran.returncode == 1, out
        assert f"{host}: failed" in ran.stdout and "drill of the copy" in ran.stdout, out
        status = sh(machine, "pullback-server status", check=False)
        assert status.returncode == 1 and host in said(world, status), status.stdout
    finally:
        sh(machine, MEND.format(pack=pack))
    # "tried again on every run until one passes": no --verify, the drill runs again
    again = sh(machine, "pullback-server copy")
    assert "drill:" in again.stdout, again.stdout
    assert sh(machine, "pullback-server status", check=False).returncode == 0


def test_a_copy_that_is_gone_is_refused_not_made_anew(machine, world):
    host = world["host"]
    sh(machine, f"mv {COPY}/{host} {COPY}.{host}.away")
    try:
        ran = sh(machine, "pullback-server copy", check=False)
        out = said(world, ran)
        assert ran.returncode == 1, out
        assert f"the copy {COPY}/{host} is gone, yet it held 3 snapshot(s)" in out, out
        assert f"pullback-server copy --host {host} --new" in out, out
        assert not (machine.path / COPY.lstrip("/") / host).exists(), "made anew"
        checked = sh(machine, "pullback-server check", check=False)
        assert "gone" in said(world, checked), checked.stdout + checked.stderr
        # "pullback-server copy --host NAME --new starts a new copy on purpose", drilled
        new = sh(machine, f"pullback-server copy --host {host} --new", check=False)
        out = said(world, new)
        assert new.returncode == 0 and "the copy holds 3" in new.stdout, out
        assert "drill:" in new.stdout and "FAILED" not in new.stdout, out
    finally:
        sh(machine, f"rm -rf {COPY}/{host} && mv {COPY}.{host}.away {COPY}/{host}")
    assert "the copy holds 3" in sh(machine, "pullback-server copy").stdout


def test_a_primary_that_is_gone_is_not_said_to_be_new(machine, world):
    host = world["host"]
    repo = f"/var/lib/pullback/repositories/{host}"
    sh(machine, f"mv {repo} {repo}.away")
    try:
        listed = sh(machine, f"pullback-server snapshots {host}", check=False)
        out = said(world, listed)
        print("\nprimary gone:", listed.returncode, out)
        assert listed.returncode == 1 and repo in out, out
        assert "no pull has stored to it" not in out, out
    finally:
        sh(machine, f"mv {repo}.away {repo}")


def test_the_export_and_key_steps_run_twice_overwrite_nothing(machine, world):
    page = world["page"]
    before = sh(machine, "sha256sum pullback-recovery.tar admin.key").stdout
    export = sh(machine, page["export"], check=False)
    assert export.returncode == 2, export.stdout + export.stderr
    assert "pullback-recovery.tar exists: remove it" in said(world, export)
    key = sh(machine, page["admin-key"], check=False)
    assert key.returncode != 0
    assert sh(machine, "sha256sum pullback-recovery.tar admin.key").stdout == before


def test_the_private_key_given_as_recipient_is_refused_and_not_shown(machine, world):
    wrong = sh(
        machine,
        "pullback-server export-recovery --output /root/h96-wrong.tar --with-secrets "
        "--recipient admin.key",
        check=False,
    )
    out = said(world, wrong)
    print("\nprivate key as recipient:", wrong.returncode, out)
    assert wrong.returncode == 1, out
    assert "age could not encrypt to admin.key" in out, out
    assert "AGE-SECRET-KEY" not in out
    assert not (machine.path / "root/h96-wrong.tar").exists()


# -- the loss and the rebuild ------------------------------------------------------------


def test_before_the_copies_are_pointed_at_the_lost_primary_is_named(machine, world):
    host, page = world["host"], world["page"]
    world["before"] = stamps(machine, host)
    sh(machine, LOSS)
    sh(machine, page["reinstall"])
    sh(machine, page["unpack"])
    # out of order: the snapshots before point-at-copies (server.yaml names the lost disk)
    early = sh(machine, f"pullback-server snapshots {host}", check=False)
    out = said(world, early)
    assert early.returncode != 0, out
    assert "/var/lib/pullback/repositories" in out and "Traceback" not in out, out
    assert "no snapshots" not in out
    print("\nbefore point-at-copies:", early.returncode, out)


def test_without_the_unpacked_secrets_the_missing_password_file_is_named(machine, world):
    host, page = world["host"], world["page"]
    sh(machine, "mv /etc/pullback/copy.pass /root/h96-copy.pass")
    try:
        sh(machine, page["point-at-copies"].replace('"$(hostname -s)"', "--help"))
        listed = sh(machine, f"pullback-server snapshots {host}", check=False)
        out = said(world, listed)
        assert listed.returncode in (1, 2), out
        print("\nno secrets:", listed.returncode, out)
        assert "/etc/pullback/copy.pass" in out and "Traceback" not in out, out
    finally:
        sh(machine, "mv /root/h96-copy.pass /etc/pullback/copy.pass")
    # the page's unpack run again puts the bundle's server.yaml back: then its next step
    sh(machine, page["unpack"])


def test_point_at_copies_lists_every_snapshot(machine, world):
    host = world["host"]
    listed = sh(machine, world["page"]["point-at-copies"])
    said(world, listed)
    assert all(stamp in listed.stdout for stamp in world["before"]), listed.stdout
    assert stamps(machine, host) == world["before"]
    # "tar -xp gives each its owner and mode again"
    modes = sh(machine, "stat -c '%a %U:%G' /etc/pullback/copy.pass /etc/pullback/server.yaml")
    assert modes.stdout.split("\n")[:2] == ["600 root:root", "640 root:pullback"], modes.stdout


def test_point_at_copies_run_twice_is_harmless(machine, world):
    yaml_before = sh(machine, "cat /etc/pullback/server.yaml").stdout
    again = sh(machine, world["page"]["point-at-copies"], check=False)
    world["point_twice"] = said(world, again)
    assert sh(machine, "cat /etc/pullback/server.yaml").stdout == yaml_before
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr


def test_a_stale_copy_password_is_named_and_not_shown(machine, world):
    host = world["host"]
    sh(machine, "cp -p /etc/pullback/copy.pass /root/h96-copy.pass")
    stale = "h96-stale-password-not-the-copies"
    try:
        sh(machine, f"echo {stale} > /etc/pullback/copy.pass")
        listed = sh(machine, f"pullback-server snapshots {host}", check=False)
        out = said(world, listed)
        assert listed.returncode == 1, out
        assert (
            f"wrong password for the restic repository {COPY}/{host} "
            "(password_file /etc/pullback/copy.pass)"
        ) in out, out
        assert stale not in out
    finally:
        sh(machine, "cp -p /root/h96-copy.pass /etc/pullback/copy.pass")


def test_a_full_host_name_is_refused_naming_the_short_one(machine, world):
    host = world["host"]
    listed = sh(machine, f"pullback-server snapshots {host}.example.org", check=False)
    out = said(world, listed)
    assert listed.returncode == 2, out
    assert f"no host named '{host}.example.org'" in out and f"known hosts: {host}" in out, out


def test_a_damaged_former_copy_fails_the_restore_and_says_so(machine, world):
    host = world["host"]
    pack = largest_pack(machine, f"{COPY}/{host}")
    sh(machine, DAMAGE.format(pack=pack))
    try:
        restored = sh(
            machine,
            f"pullback-server restore {host} --service www --target /var/tmp/h96-damaged",
            check=False,
        )
        out = said(world, restored)
        print("\ndamaged restore:", restored.returncode, out)
        print(sh(machine, "find /var/tmp/h96-damaged | head -20", check=False).stdout)
        assert restored.returncode == 1, out
        assert "pullback-client restore" not in restored.stdout, out
    finally:
        sh(machine, MEND.format(pack=pack))


def test_the_restore_steps_restore_and_run_twice_refuse_to_mix(machine, world):
    host, page = world["host"], world["page"]
    said(world, sh(machine, page["restore"]))
    assert (machine.path / "srv/www/index.html").read_text() == PAGE
    again = sh(machine, page["restore"], check=False)
    out = said(world, again)
    print("\nrestore twice:", again.returncode, out)
    assert again.returncode == 2, out
    assert "--force" in out, out
    assert host


def test_the_pulls_resume_and_the_copy_timer_skips_quietly(machine, world):
    host, page = world["host"], world["page"]
    # out of order: a pull before the one step on the client is refused, and says why
    early = sh(machine, "pullback-server pull", check=False)
    out = said(world, early)
    print("\npull before the clients step:", early.returncode, out)
    assert early.returncode == 1, out
    sh(machine, page["clients"])
    resumed = sh(machine, page["resume"])
    out = said(world, resumed)
    row = next(line for line in resumed.stdout.splitlines() if line.startswith(f"{host} "))
    assert row.split()[1:3] == ["ok", "stored"], out
    assert len(stamps(machine, host)) == len(world["before"]) + 1
    timer = sh(
        machine,
        "systemctl start pullback-copy.service && systemctl show -p Result pullback-copy"
        " && journalctl -u pullback-copy -o cat --no-pager | tail -3",
    )
    assert "Result=exec-condition" in timer.stdout, timer.stdout
    assert "no copy: section in /etc/pullback/server.yaml: nothing to copy" in timer.stdout


def test_the_unpack_step_run_again_does_not_fork_the_history(machine, world):
    host, page = world["host"], world["page"]
    held = stamps(machine, host)
    sh(machine, "cp -p /etc/pullback/server.yaml /root/h96-server.yaml")
    try:
        sh(machine, page["unpack"])
        sh(machine, "systemctl start pullback-client.service")
        pulled = sh(machine, "pullback-server pull", check=False)
        out = said(world, pulled)
        listed = sh(machine, f"pullback-server snapshots {host} --json", check=False)
        now = [s["stamp"] for s in json.loads(listed.stdout or "[]")]
        print("\nunpack again, pull:", pulled.returncode, out, "\nsnapshots now:", now)
        forked = (machine.path / "var/lib/pullback/repositories" / host).exists()
        refused = pulled.returncode == 1 and not forked
        assert refused or set(held) <= set(now), (held, now, out)
    finally:
        sh(machine, "cp -p /root/h96-server.yaml /etc/pullback/server.yaml")
        sh(machine, f"rm -rf /var/lib/pullback/repositories/{host}")
    assert stamps(machine, host)[: len(held)] == held


def test_a_new_second_copy_after_the_rebuild_keeps_the_history_readable(machine, world):
    host = world["host"]
    held = stamps(machine, host)
    sh(machine, "cp -p /etc/pullback/server.yaml /etc/pullback/copy.pass /root/")
    try:
        # the page's block as written: refused at load (the copy would be the primary) ...
        sh(machine, world["page"]["copy-config"])
        refused = sh(machine, f"pullback-server snapshots {host}", check=False)
        out = said(world, refused)
        print("\nnew copy, as written:", refused.returncode, out)
        assert refused.returncode == 2 and "Traceback" not in out, out
        # ... so, as the page says, on another disk: the history must still open
        moved = f"sed -i '/^copy:/,$ s|root: {COPY}$|root: {COPY}2|' /etc/pullback/server.yaml"
        sh(machine, moved)
        listed = sh(machine, f"pullback-server snapshots {host} --json", check=False)
        out = said(world, listed)
        print("\nnew copy on another disk:", listed.returncode, out)
        assert listed.returncode == 0, out
        assert [s["stamp"] for s in json.loads(listed.stdout)] == held
    finally:
        sh(machine, "cp -p /root/server.yaml /root/copy.pass /etc/pullback/")
    assert stamps(machine, host) == held


def test_former_copies_outside_the_units_paths_are_named_by_check(machine, world):
    """'the pull's needs it too ... (pullback-server check names each unit that lacks it)'"""
    sh(machine, "cp -p /etc/pullback/server.yaml /root/h96-server.yaml")
    sh(machine, f"mkdir -p /mnt/offsite && mv {COPY}/* /mnt/offsite/")
    try:
        sh(machine, f"sed -i 's|{COPY}|/mnt/offsite|' /etc/pullback/server.yaml")
        checked = sh(machine, "pullback-server check", check=False)
        out = said(world, checked)
        print("\ncheck, copies on /mnt/offsite:", checked.returncode, out)
        assert checked.returncode == 1, out
        assert "pullback-server.service" in out and "pullback-maintain.service" in out, out
        assert "/mnt/offsite" in out
    finally:
        sh(
            machine,
            f"mv /mnt/offsite/* {COPY}/ && cp -p /root/h96-server.yaml /etc/pullback/server.yaml",
        )
    back = sh(machine, "pullback-server check", check=False)
    print("\ncheck, copies back:", back.returncode, back.stdout, back.stderr)
    assert "outside the ReadWritePaths" not in back.stdout + back.stderr
    assert f"repository {COPY}/{world['host']} has" in back.stdout, back.stdout


def test_no_password_in_argv_the_journal_or_what_was_printed(machine, world):
    argv = sh(machine, "cat /var/lib/pullback/h96-argv.log").stdout
    assert "copy" in argv and "snapshots" in argv, "the wrapper saw restic's runs"
    journal = sh(machine, "journalctl -b --no-pager -o cat").stdout
    status = sh(machine, "cat /var/lib/pullback/server/status.json").stdout
    printed = "\n".join(world["said"])
    bundle = sh(machine, "tar -xOf pullback-recovery.tar --exclude '*.age'").stdout
    assert "copy password /etc/pullback/copy.pass" in bundle, bundle
    for name, password in world["passwords"].items():
        assert len(password) > 20
        places = (("argv", argv), ("journal", journal), ("status", status), ("bundle", bundle))
        for where, text in places:
            assert password not in text, f"{name} in {where}"
        assert password not in printed, f"{name} printed"
