"""docs/install.md followed as root, in a temp prefix: `make install` and
`make install-links`, then the installed smtpd started exactly as
contrib/pysmtpd.service starts it (no systemd here: its ExecStartPre,
ExecStart and ExecReload lines are run by hand, under the unit's capability
bounding set and no_new_privs) inside a network namespace of its own, where
it owns port 25.  Mail goes in through the installed sendmail (via the
/usr/sbin/sendmail-style link) and over SMTP to port 25, and comes out of a
Maildir; `smtpctl show status` answers; SIGHUP applies a new rule; SIGTERM
stops everything; a second `make install` upgrades in place and
`make uninstall` removes what was installed.  Nothing outside the temp dir is written: the users must
exist already (`make users`), the install is told not to add them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import smtplib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.daemon import make_world_traversable, temp_workdir
from tests.integration.queue_helpers import maildir_files, read_mail, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "installs and binds port 25 as root"
    for tool in ("ip", "setpriv", "make"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    for user in ("_smtpd", "_smtpq"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"user {user} missing: run `make users` (the test adds no users)"
    return None


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())),
              pytest.mark.timeout(150)]


@dataclass(frozen=True)
class Layout:
    """The install's paths, all inside one temp dir."""
    top: Path

    @property
    def make_vars(self) -> list[str]:
        t = self.top
        return [f"PREFIX={t}/usr", f"SYSCONFDIR={t}/etc", f"SPOOLDIR={t}/var/spool/smtpd",
                f"RUNDIR={t}/run", f"UNITDIR={t}/etc/systemd/system", "CREATE_USERS=no"]

    def sbin(self, name: str) -> Path:
        return self.top / "usr" / "sbin" / name

    @property
    def conf(self) -> Path:
        return self.top / "etc" / "smtpd.conf"

    @property
    def unit(self) -> Path:
        return self.top / "etc" / "systemd" / "system" / "pysmtpd.service"

    @property
    def maildir(self) -> Path:
        return self.top / "mail" / "root"


def make(target: str, layout: Layout, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", "-C", str(ROOT), target, *layout.make_vars, *extra],
                          capture_output=True, text=True, timeout=240)


def unit_values(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        m = re.match(r"^(\w+)=(.*)$", line)
        if m:
            values.setdefault(m.group(1), []).append(m.group(2))
    return values


def bounding_set(unit: dict[str, list[str]]) -> str:
    """CapabilityBoundingSet= as setpriv(1) spells it: -all,+net_bind_service..."""
    caps = unit["CapabilityBoundingSet"][0].split()
    return ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pysmtpd-{uuid.uuid4().hex[:8]}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"ip netns add failed: {added.stderr.strip()}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def layout() -> Iterator[Layout]:
    top = temp_workdir()  # not tmp_path: the daemon's users must traverse it
    make_world_traversable(top)
    yield Layout(top)
    shutil.rmtree(top, ignore_errors=True)


def in_netns(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A worker thread living in the namespace: setns(2) on a network
    namespace changes only the calling thread, so its sockets are there."""
    def enter() -> None:
        with open(f"/run/netns/{name}") as f:
            os.setns(f.fileno(), os.CLONE_NEWNET)
    return concurrent.futures.ThreadPoolExecutor(1, initializer=enter)


def rcpt_reply(rcpt: str) -> int:
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("someone@example.test")
        return s.rcpt(rcpt)[0]


def smtp_send(rcpt: str, subject: str) -> int:
    with smtplib.SMTP("127.0.0.1", 25, timeout=10) as s:
        s.ehlo("client.test")
        s.sendmail("someone@example.test", [rcpt], f"Subject: {subject}\r\n\r\nvia port 25\r\n")
        return 0


def mail_with_subject(maildir: Path, subject: str) -> bool:
    return any(read_mail(p)["Subject"] == subject for p in maildir_files(maildir))


def test_docs_name_the_commands_this_test_runs() -> None:
    doc = DOC.read_text()
    for command in ("make install", "make install-links", "make uninstall", "smtpd -n",
                    "smtpctl show status", "systemctl enable --now pysmtpd",
                    "systemctl reload pysmtpd", "journalctl -u pysmtpd", "/usr/sbin/sendmail"):
        assert command in doc, command


def test_install_links_refuse_another_mtas_sendmail(layout: Layout) -> None:
    other = layout.top / "root" / "usr" / "sbin" / "sendmail"
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\n# exim's\n")
    out = make("install-links", layout, f"DESTDIR={layout.top}/root")
    assert out.returncode != 0
    assert "/usr/sbin/sendmail belongs to another MTA" in out.stderr
    assert other.read_text() == "#!/bin/sh\n# exim's\n"
    # the free ones are linked all the same
    assert os.readlink(layout.top / "root/usr/bin/mailq") == f"{layout.top}/usr/bin/mailq"


def test_installed_service_receives_mail_on_port_25(layout: Layout, netns: str) -> None:
    out = make("install", layout)
    assert out.returncode == 0, out.stdout + out.stderr
    links = make("install-links", layout, f"DESTDIR={layout.top}/root")
    assert links.returncode == 0, links.stderr
    sendmail = layout.top / "root" / "usr" / "sbin" / "sendmail"
    assert os.readlink(sendmail) == str(layout.sbin("sendmail"))
    spool = layout.top / "var/spool/smtpd"
    assert spool.stat().st_mode & 0o7777 == 0o711
    offline = (spool / "offline").stat()
    assert (offline.st_mode & 0o7777, offline.st_gid) == (0o1733, pwd.getpwnam("_smtpq").pw_gid)
    analyze = shutil.which("systemd-analyze")
    if analyze:  # the unit as installed: syntax, and its programs exist
        verify = subprocess.run([analyze, "verify", str(layout.unit)], capture_output=True,
                                text=True, timeout=60)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    # The shipped config, with deliveries moved from ~/Maildir into the temp dir.
    conf = layout.conf.read_text()
    assert 'action "local" maildir alias <aliases>' in conf
    layout.conf.write_text(conf.replace(
        'action "local" maildir alias', f'action "local" maildir "{layout.top}/mail/%{{user.username}}" alias'))
    check = subprocess.run([str(layout.sbin("smtpd")), "-n"], capture_output=True, text=True)
    assert (check.returncode, check.stderr.strip()) == (0, "configuration OK"), check.stderr

    # Before the first start: sendmail leaves the mail in offline/ (EX_TEMPFAIL,
    # as upstream) and the daemon enqueues it when it starts.
    early = subprocess.run([str(sendmail), "root"], input=b"Subject: before start\n\nearly\n",
                           capture_output=True, timeout=30)
    assert early.returncode == os.EX_TEMPFAIL, early.stderr
    assert len(list((spool / "offline").iterdir())) == 1

    unit = unit_values(layout.unit)
    assert unit["Type"] == ["simple"]
    for pre in unit["ExecStartPre"]:
        subprocess.run(shlex.split(pre), check=True, capture_output=True, timeout=30)
    start = shlex.split(unit["ExecStart"][0])
    assert start[:2] == [str(layout.sbin("smtpd")), "-F"]
    log = (layout.top / "smtpd.log").open("w")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "setpriv", "--bounding-set", bounding_set(unit),
         "--no-new-privs", *start],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # the unit's environment: a suite run on uvloop must not ask the
        # first install (without the fast extra) for it
        env={k: v for k, v in os.environ.items() if k != "PYSMTPD_EVENT_LOOP"})
    ns = in_netns(netns)
    try:
        smtpctl = [str(layout.sbin("smtpctl")), "show", "status"]
        status = wait_until("smtpctl show status", lambda: _ok(smtpctl), timeout=30, step=0.2)
        assert status.stdout.splitlines() == ["MDA running", "MTA running", "SMTP running"]
        # the privilege drop works with the installed users and the unit's capabilities
        # every child sets its title once started: control may answer first
        titles = {f"smtpd: {n}" for n in ("parent", "control", "lookup", "scheduler",
                                           "queue", "smtp")}
        owners = wait_until("all six processes", lambda: (
            found if titles <= set(found := _titles_and_uids(proc.pid)) else None),
            timeout=30, step=0.2)
        assert owners["smtpd: parent"] == 0
        assert owners["smtpd: queue"] == pwd.getpwnam("_smtpq").pw_uid
        assert owners["smtpd: smtp"] == pwd.getpwnam("_smtpd").pw_uid
        assert proc.poll() is None

        # sendmail(8) as other software calls it, from inside the namespace
        sent = subprocess.run(["ip", "netns", "exec", netns, str(sendmail), "-t", "-i"],
                              input=b"To: root\nSubject: by sendmail\n\nhello\n",
                              capture_output=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        # SMTP on port 25 of the namespace's loopback
        assert ns.submit(smtp_send, "root@localhost", "by smtp").result(20) == 0
        wait_until("all three mails", lambda: all(
            mail_with_subject(layout.maildir, s)
            for s in ("before start", "by sendmail", "by smtp")), timeout=20)
        assert not list((spool / "offline").iterdir())
        # before the reload this address is accepted
        assert ns.submit(rcpt_reply, "nobody@localhost").result(20) == 250

        # reload: a new rule, applied by the unit's ExecReload lines (SIGHUP)
        layout.conf.write_text(_with_reject(layout.conf.read_text()))
        for line in unit["ExecReload"]:
            subprocess.run(shlex.split(line.replace("$MAINPID", str(proc.pid))),
                           check=True, capture_output=True, timeout=30)
        wait_until("the reloaded rule", lambda: ns.submit(
            rcpt_reply, "nobody@localhost").result(20) == 550, timeout=15, step=0.2)
        assert proc.poll() is None

        # systemctl stop: SIGTERM to the main pid (KillMode=mixed)
        assert unit["KillMode"] == ["mixed"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        wait_until("children gone", lambda: not _group_alive(proc.pid), timeout=10)
    finally:
        ns.shutdown(wait=False)
        if proc.poll() is None or _group_alive(proc.pid):
            with_log = (layout.top / "smtpd.log").read_text()
            _kill_group(proc.pid)
            proc.wait(timeout=10)
            print(with_log)
        log.close()

    # Upgrade (docs/install.md section 10): a new venv swapped in, the admin's
    # smtpd.conf kept, the commands still work; this one with the `fast` extra.
    edited = layout.conf.read_text()
    again = make("install", layout, "EXTRAS=fast")
    assert again.returncode == 0, again.stderr
    venv_python = layout.top / "usr/lib/pysmtpd/bin/python"
    assert subprocess.run([str(venv_python), "-I", "-c", "import uvloop"]).returncode == 0
    assert f"kept {layout.conf}" in again.stdout and layout.conf.read_text() == edited
    assert not (layout.top / "usr/lib/pysmtpd.old").exists()
    check = subprocess.run([str(layout.sbin("smtpd")), "-n"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    for extra in ([], [f"DESTDIR={layout.top}/root"]):  # the install, then the links
        out = make("uninstall", layout, *extra)
        assert out.returncode == 0, out.stderr
    assert not (layout.top / "usr/lib/pysmtpd").exists()
    assert not layout.sbin("smtpd").exists() and not sendmail.is_symlink()
    assert layout.conf.exists()  # the admin's file stays


def _ok(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return out if out.returncode == 0 else None


def _with_reject(conf: str) -> str:
    rule = 'match from any for rcpt-to "nobody@localhost" reject\n'
    head, sep, tail = conf.partition("match from local for local")
    assert sep, conf
    return head + rule + sep + tail


def _titles_and_uids(pgid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            # status, not the directory's owner: that turns root when a
            # process that changed uid is not dumpable
            uid = next(line.split()[2] for line in (entry / "status").read_text().splitlines()
                       if line.startswith("Uid:"))  # real, effective, saved, fs
            found[title] = int(uid)
        except (OSError, UnicodeDecodeError):
            continue
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
