"""sendmail(8): local submission through the running daemon, as upstream's
enqueue.c (smtpctl in sendmail mode).

    sendmail [-tv] [-f from] [-F name] [-N dsn] [-R ret] [-V envid] to ...

The message is read from stdin to its end (a lone "." never ends it, as
upstream: -i/-oi are accepted and change nothing), scanned (smtpctl.enqueue)
and submitted over the SMTP session that `ControlClient.enqueue()` opens for
the calling user.  Exit status: 0 once the daemon accepted the message,
EX_SOFTWARE (70) when it refused it (the message is saved in ~/dead.letter)
or there are no recipients, 1 on a usage error.

When the daemon is not running the message goes to the spool's offline/
directory instead and sendmail exits EX_TEMPFAIL (75) as upstream does: the
file, owned by the user, holds the arguments on its first line ("|"
between them, upstream's format) and the message; smtpd.offline submits it
as that user at the next start (`run_offline`).  Unlike upstream the stored
message keeps its Bcc: lines (removed at submission, so -t still reaches
Bcc recipients) and gets its Date: now, when the mail was written.

Compatibility switches: -bp lists the queue (mailq), -bi rebuilds aliases
(newaliases), -bs speaks SMTP on stdin/stdout through the local session;
upstream's ignored flags (-A -B -b -E -e -i -J -L -m -o -p -x) are ignored;
-q is refused with EX_SOFTWARE as upstream.  -v prints the dialogue with
">>> " (client) and "<<< " (server) prefixes on stderr (upstream: stdout,
which -bs needs for SMTP).
"""

from __future__ import annotations

import contextlib
import enum
import os
import pwd
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import BinaryIO, TextIO

from smtpctl.client import ControlClient, ControlError
from smtpctl.enqueue import Added, AddressError, Scan, data_lines, normalize, scan
from smtpctl.localconf import Local, load_local

# getopt(3) string of enqueue.c plus -C (the config file, to find the daemon)
OPTIONS = "A:B:b:C:E::e:F:f:iJ::L:mN:o:p:qr:R:StvV:x"
USAGE = "usage: sendmail [-tv] [-f from] [-F name] to ..."
CHUNK = 64 * 1024
SESSION_TIMEOUT = 300.0  # a stuck daemon is a failure, not a hang


class UsageError(Exception):
    pass


class SubmitError(Exception):
    def __init__(self, text: str, temporary: bool = False) -> None:
        super().__init__(text)
        self.temporary = temporary  # a 4xx reply or a lost session


class Mode(enum.Enum):
    SEND = "send"
    SMTP = "bs"
    QUEUE = "bp"
    ALIASES = "bi"


@dataclass
class Opts:
    fake_from: str | None = None
    fromname: str | None = None
    dsn_notify: str | None = None
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    config: str | None = None
    tflag: bool = False
    verbose: bool = False
    no_getlogin: bool = False
    quit_now: bool = False  # -q: upstream refuses
    mode: Mode = Mode.SEND
    rcpts: list[str] = field(default_factory=list)


def getopt(argv: list[str], spec: str = OPTIONS) -> tuple[list[tuple[str, str | None]],
                                                           list[str]]:
    """GNU getopt(3) as the portable upstream gets it: options may follow
    operands, "--" ends them; "x::" takes an argument only when attached."""
    kinds: dict[str, str] = {}
    i = 0
    while i < len(spec):
        ch = spec[i]
        colons = 0
        while i + 1 + colons < len(spec) and spec[i + 1 + colons] == ":":
            colons += 1
        kinds[ch] = ("", ":", "::")[min(colons, 2)]
        i += 1 + colons
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            operands += args
            break
        if not arg.startswith("-") or arg == "-":
            operands.append(arg)
            continue
        j = 1
        while j < len(arg):
            ch = arg[j]
            kind = kinds.get(ch)
            if kind is None:
                raise UsageError(f"invalid option -- '{ch}'")
            rest = arg[j + 1:]
            if kind == "":
                opts.append((ch, None))
                j += 1
                continue
            if kind == "::":
                opts.append((ch, rest or None))
            elif rest:
                opts.append((ch, rest))
            elif args:
                opts.append((ch, args.pop(0)))
            else:
                raise UsageError(f"option requires an argument -- '{ch}'")
            break
    return opts, operands


def parse_args(argv: list[str]) -> Opts:
    o = Opts()
    opts, operands = getopt(argv)
    for ch, arg in opts:
        match ch:
            case "f" | "r":
                o.fake_from = arg
            case "F":
                o.fromname = arg
            case "N":
                o.dsn_notify = arg
            case "R":
                o.dsn_ret = arg
            case "V":
                o.dsn_envid = arg
            case "C":
                o.config = arg
            case "S":
                o.no_getlogin = True
            case "t":
                o.tflag = True
            case "v":
                o.verbose = True
            case "q":
                o.quit_now = True
            case "b":
                # upstream ignores -b; these three have a meaning here
                for mode in (Mode.SMTP, Mode.QUEUE, Mode.ALIASES):
                    if arg == mode.value[1:]:
                        o.mode = mode
            case _:
                pass  # sendmail compatibility: accepted and ignored
    o.rcpts = operands
    return o


# -- who is sending ----------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    user: str
    pw: pwd.struct_passwd | None


def identity(no_getlogin: bool) -> Identity:
    """enqueue.c: the login name when it belongs to the real uid (or the real
    uid is root), else the real uid's passwd entry; "anonymous" without one.
    -S (the offline replay) always takes the real uid."""
    ruid = os.getuid()
    login: str | None = None
    if not no_getlogin:
        with contextlib.suppress(OSError):
            login = os.getlogin() or None
    pw: pwd.struct_passwd | None = None
    if login is not None:
        try:
            pw = pwd.getpwnam(login)
            if ruid not in (0, pw.pw_uid):
                pw = None
        except KeyError:
            pw = None
    if pw is None:
        try:
            pw = pwd.getpwuid(ruid)
        except KeyError:
            pw = None
    return Identity(pw.pw_name if pw else (login or "anonymous"), pw)


def qualify(addr: str, host: str) -> str:
    return f"{addr}@{host}" if addr and "@" not in addr else addr


def gecos_name(pw: pwd.struct_passwd) -> str:
    """The full name from the GECOS field: up to the first comma, "&"
    standing for the capitalized login name (passwd(5))."""
    name = pw.pw_gecos.split(",", 1)[0]
    if "&" in name:
        name = name.replace("&", pw.pw_name[:1].upper() + pw.pw_name[1:], 1)
    return name


def envelope_sender(o: Opts, who: Identity, s: Scan, host: str) -> str:
    if o.fake_from is not None:
        addr = o.fake_from
        if addr.startswith("<"):
            if not addr.endswith(">"):
                raise UsageError("leading < but no trailing >")
            addr = addr[1:-1]
        return qualify(addr, host)
    # upstream: the From: header's address is the sender ("not sendmail
    # compatible, but I really want it that way")
    if s.header_from is not None:
        return qualify(s.header_from, host)
    return qualify(who.user, host)


def recipients(o: Opts, s: Scan, host: str) -> list[str]:
    out: list[str] = []
    for arg in [*o.rcpts, *s.rcpts]:
        out += [qualify(a, host) for a in arg.split(",")]
    return out


# -- the SMTP dialogue ----------------------------------------------------------


class Dialogue:
    """Blocking, one command at a time as upstream's enqueuer; -v shows both
    sides of the exchange."""

    def __init__(self, sock: socket.socket, verbose: bool, err: TextIO) -> None:
        sock.settimeout(SESSION_TIMEOUT)
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.verbose = verbose
        self.err = err

    def command(self, line: str) -> str:
        if self.verbose:
            print(f">>> {line}", file=self.err)
        self.sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.reply()

    def reply(self) -> str:
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                raise SubmitError("the daemon closed the session", temporary=True)
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3:
                raise SubmitError("bad response")
            if self.verbose:
                print(f"<<< {line}", file=self.err)
            if line[3:4] == "-":
                continue
            if line[0] not in "23":
                raise SubmitError(f"command failed: {line}", temporary=line[0] == "4")
            return line

    def data(self, lines: Iterator[bytes]) -> None:
        buf = bytearray()
        for line in lines:
            buf += line
            if len(buf) >= CHUNK:
                self.sock.sendall(buf)
                buf.clear()
        if buf:
            self.sock.sendall(buf)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def submit(sock: socket.socket, o: Opts, sender: str, rcpts: list[str], s: Scan,
           added: Added, err: TextIO) -> None:
    d = Dialogue(sock, o.verbose, err)
    try:
        d.reply()  # the greeting
        d.command("EHLO localhost")
        params = "".join(f" {k}={v}" for k, v in (("RET", o.dsn_ret), ("ENVID", o.dsn_envid))
                         if v)
        d.command(f"MAIL FROM:<{sender}>{params}")
        notify = f" NOTIFY={o.dsn_notify}" if o.dsn_notify else ""
        for rcpt in rcpts:
            d.command(f"RCPT TO:<{rcpt}>{notify}")
        d.command("DATA")
        d.data(data_lines(s, added))
        d.command(".")
        d.command("QUIT")
    finally:
        d.close()


def save_dead_letter(who: Identity, s: Scan, added: Added) -> None:
    """enqueue.c savedeadletter(): the message as it would have been sent,
    in ~/dead.letter (mode 0600), so that a refused mail is not lost."""
    if who.pw is None:
        return
    path = os.path.join(who.pw.pw_dir, "dead.letter")
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            for line in data_lines(s, added):
                body = line[:-2]
                f.write((body[1:] if body.startswith(b"..") else body) + b"\n")
            f.write(b"\n")


# -- offline -----------------------------------------------------------------------


def daemon_running(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def write_offline(directory: str, argv: list[str], lines: list[bytes], s: Scan,
                  date: str, err: TextIO) -> int:
    for arg in argv:
        if "|" in arg or "\n" in arg:
            print(f"sendmail: {arg} contains illegal character", file=err)
            return os.EX_SOFTWARE
    # Written under a dot name, renamed when complete: the daemon skips dot
    # names, so a start racing with this write never sees half a message.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{int(time.time())}.", dir=directory)
    except OSError as exc:
        print(f"sendmail: cannot create temporary file in {directory}: {exc.strerror}",
              file=err)
        return os.EX_UNAVAILABLE
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write("|".join(argv).encode("utf-8", "surrogateescape") + b"\n")
            if not s.saw_date:
                f.write(f"Date: {date}\n".encode())
                if s.noheader:
                    f.write(b"\n")
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(directory, os.path.basename(tmp)[1:]))
    except OSError as exc:
        print(f"sendmail: write error: {exc.strerror}", file=err)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return os.EX_UNAVAILABLE
    return os.EX_TEMPFAIL


# -- the modes ------------------------------------------------------------------


def read_lines(stream: BinaryIO) -> list[bytes]:
    return [normalize(line) for line in stream]


def send(argv: list[str], o: Opts, local: Local, stdin: BinaryIO, err: TextIO,
         *, offline_ok: bool = True) -> int:
    who = identity(o.no_getlogin)
    lines = read_lines(stdin)
    try:
        s = scan(lines, o.tflag, get_from=o.fake_from is None)
        sender = envelope_sender(o, who, s, local.hostname)
    except (AddressError, UsageError) as exc:
        print(f"sendmail: {exc}", file=err)
        return 1
    rcpts = recipients(o, s, local.hostname)
    words = [sender, *rcpts, o.dsn_notify or "", o.dsn_ret or "", o.dsn_envid or ""]
    if any(c in word for word in words for c in "\r\n\0"):
        # they go on SMTP command lines: never a second command
        print("sendmail: line break or NUL in an address or DSN parameter", file=err)
        return 1
    if not rcpts:
        print("sendmail: no recipients", file=err)
        return os.EX_SOFTWARE
    fromname = o.fromname
    if fromname is None and o.fake_from is None and who.pw is not None:
        fromname = gecos_name(who.pw) or None
    added = Added(sender, fromname, formatdate(localtime=True))
    if offline_ok and not daemon_running(local.socket):
        return write_offline(local.offline_dir, argv, lines, s, added.date, err)
    try:
        client = ControlClient(local.socket)
        try:
            sock = client.enqueue()
        finally:
            client.close()
    except (ControlError, OSError) as exc:
        print(f"sendmail: {exc}", file=err)
        # the offline replay tries again at the next start
        return 1 if offline_ok else os.EX_TEMPFAIL
    try:
        submit(sock, o, sender, rcpts, s, added, err)
    except (SubmitError, OSError) as exc:
        print(f"sendmail: {exc}", file=err)
        temporary = not isinstance(exc, SubmitError) or exc.temporary
        if not offline_ok and temporary:
            return os.EX_TEMPFAIL
        save_dead_letter(who, s, added)
        return os.EX_SOFTWARE
    return os.EX_OK


def smtp_on_stdio(local: Local, stdin: BinaryIO, stdout: BinaryIO, err: TextIO) -> int:
    """-bs: the caller speaks SMTP itself, through the local session."""
    try:
        client = ControlClient(local.socket)
        try:
            sock = client.enqueue()
        finally:
            client.close()
    except ControlError as exc:
        print(f"sendmail: {exc}", file=err)
        return os.EX_UNAVAILABLE
    inp, out = stdin.fileno(), stdout.fileno()
    with sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(inp, selectors.EVENT_READ, "stdin")
        while True:
            for key, _ in sel.select():
                if key.data == "sock":
                    data = sock.recv(CHUNK)
                    if not data:
                        return os.EX_OK
                    view = memoryview(data)
                    while view:
                        view = view[os.write(out, view):]
                else:
                    data = os.read(inp, CHUNK)
                    if not data:
                        sel.unregister(inp)
                        sock.shutdown(socket.SHUT_WR)
                    else:
                        sock.sendall(data)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        o = parse_args(args)
    except UsageError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 1
    if o.mode is Mode.ALIASES:
        from smtpctl.makemap import newaliases
        return newaliases(o.config)
    if o.mode is Mode.QUEUE:
        from smtpctl.mailq import mailq
        return mailq(o.config)
    if o.quit_now:
        return os.EX_SOFTWARE  # upstream: "process all now" is not implemented
    local = load_local(o.config)
    if o.mode is Mode.SMTP:
        return smtp_on_stdio(local, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    return send(args, o, local, sys.stdin.buffer, sys.stderr)


def run_offline(argv: list[str], stdin: BinaryIO, socket_path: str, hostname: str,
                err: TextIO) -> int:
    """The daemon's replay of an offline file (upstream: `sendmail -S ARGS`
    with the file as stdin), run as the file's owner: never written offline
    again, never verbose."""
    try:
        o = parse_args(argv)
    except UsageError as exc:
        print(f"sendmail: {exc}", file=err)
        return os.EX_USAGE
    o.no_getlogin = True
    o.verbose = False
    if o.mode is not Mode.SEND or o.quit_now:
        print("sendmail: not a message submission", file=err)
        return os.EX_USAGE
    local = Local(socket_path, "", hostname, None)
    return send(argv, o, local, stdin, err, offline_ok=False)


if __name__ == "__main__":
    sys.exit(main())
