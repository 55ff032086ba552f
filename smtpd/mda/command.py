"""`action "x" mda "command"`: pipe the message to a program.

CVE-2020-7247 was an envelope address reaching `/bin/sh -c` through this
path (DESIGN.md §4).  Here envelope data never becomes shell syntax:

- argv mode (the usual case): the configured command is split with
  shlex (quotes and backslashes as in sh) *before* expansion, then each
  argv element is expanded on its own, and the program is exec'd
  directly.  An address like `a;rm -rf /@x` is one argument, nothing more.
- shell mode, only when the admin's command itself needs a shell (it
  contains one of SHELL_META outside %{...}): `/bin/sh -c` runs the
  command *as written*, with each %{...} replaced by a reference
  `${SMTPD_FMT_n}` to an environment variable holding the expanded
  value.  The shell substitutes a parameter's value but never parses it
  as commands; note that inside single quotes it does not expand at all.

The environment is upstream's (mda_unpriv.c): PATH=_PATH_DEFPATH, HOME,
USER, LOGNAME, SHELL=/bin/sh, SENDER, RECIPIENT (final address),
ORIGINAL_RECIPIENT, LOCAL, DOMAIN and EXTENSION (+tag, when present).
The message (Return-Path and Delivered-To first) is written on stdin;
stdout and stderr go to one temporary file whose last line explains a
failure.  Exit status: 0 OK; EX_TEMPFAIL (75), a signal or the timeout
(the whole process group is killed) TEMPFAIL; anything else PERMFAIL.
An exit 0 before the whole message was read is TEMPFAIL, as upstream's
"mda exited prematurely".
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from smtpd.mda.format import (
    FormatContext,
    FormatError,
    Token,
    expand_token,
    parse_template,
)
from smtpd.mda.message import chunks, prepare
from smtpd.mda.types import DeliveryRequest, DeliveryResult, ok, permfail, tempfail

PATH_DEFPATH = "/usr/bin:/bin"  # glibc's _PATH_DEFPATH, as Debian's 6.8 uses
EX_TEMPFAIL = 75
SHELL_META = frozenset("|&;<>()$`*?[#!\n")
_SYSEXITS = {
    64: "EX_USAGE", 65: "EX_DATAERR", 66: "EX_NOINPUT", 67: "EX_NOUSER",
    68: "EX_NOHOST", 69: "EX_UNAVAILABLE", 70: "EX_SOFTWARE", 71: "EX_OSERR",
    72: "EX_OSFILE", 73: "EX_CANTCREAT", 74: "EX_IOERR", 75: "EX_TEMPFAIL",
    76: "EX_PROTOCOL", 77: "EX_NOPERM", 78: "EX_CONFIG",
}  # fmt: skip
_PH_OPEN, _PH_CLOSE = "\ue000", "\ue001"  # private-use: never in a config string


@dataclass(frozen=True, slots=True)
class Invocation:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    shell: bool


def _addr(addr: str) -> tuple[str, str]:
    user, at, domain = addr.rpartition("@")
    return (user, domain) if at else (addr, "")


def mda_environment(req: DeliveryRequest) -> dict[str, str]:
    """The environment upstream's mda_unpriv() builds, nothing inherited."""
    r_user, r_domain = _addr(req.orig_rcpt or req.rcpt)
    d_user, d_domain = _addr(req.rcpt)
    env = {
        "PATH": PATH_DEFPATH,
        "DOMAIN": r_domain,
        "HOME": req.home,
        "ORIGINAL_RECIPIENT": f"{r_user}@{r_domain}",
        "RECIPIENT": f"{d_user}@{d_domain}",
        "SHELL": "/bin/sh",
        "LOCAL": r_user,
        "LOGNAME": req.user,
        "USER": req.user,
        "SENDER": req.sender,
    }
    if req.subaddress:
        env["EXTENSION"] = req.subaddress
    return env


def _placeholders(template: str, tokens: list[Token]) -> str:
    """The template with each %{...} replaced by a numbered placeholder."""
    out: list[str] = []
    for part in parse_template(template):
        if isinstance(part, str):
            out.append(part)
        else:
            out.append(f"{_PH_OPEN}{len(tokens)}{_PH_CLOSE}")
            tokens.append(part)
    return "".join(out)


def _needs_shell(text: str) -> bool:
    """True if sh would treat some character of `text` specially.

    Quotes and backslashes are what shlex.split already does like sh, so
    they alone do not need a shell: inside '...' nothing is special, inside
    "..." only $ and ` are (and backslash, which shlex handles).
    """
    quote = ""
    escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\" and quote != "'":
            escaped = True
        elif quote == "'":
            quote = "" if c == "'" else quote
        elif quote == '"':
            if c == '"':
                quote = ""
            elif c in "$`":
                return True
        elif c in "'\"":
            quote = c
        elif c in SHELL_META:
            return True
    return False


def _assigns(template: str) -> bool:
    """`VAR=value cmd` or `~user/cmd`: sh semantics that shlex lacks."""
    try:
        words = shlex.split(_placeholders(template, []))
    except ValueError:
        return False  # reported by _argv
    first = words[0] if words else ""
    return "=" in first or (first.startswith("~") and not first.startswith("~/"))


def _fill(text: str, values: list[str]) -> str:
    for i, v in enumerate(values):
        text = text.replace(f"{_PH_OPEN}{i}{_PH_CLOSE}", v)
    return text


def _argv(template: str, ctx: FormatContext, inner: tuple[str, ...] | None) -> tuple[str, ...]:
    tokens: list[Token] = []
    text = _placeholders(template, tokens)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise FormatError(f"cannot split mda command: {exc}") from None
    if not words:
        raise FormatError("empty mda command")
    inner_text = shlex.join(inner) if inner is not None else None
    values = [expand_token(t, ctx, inner_text) for t in tokens]
    argv: list[str] = []
    for word in words:
        whole = [i for i, t in enumerate(tokens) if word == f"{_PH_OPEN}{i}{_PH_CLOSE}"]
        if inner is not None and whole and tokens[whole[0]].name == "mda":
            argv.extend(inner)  # the wrapped command keeps its own argv
            continue
        if word.startswith("~/"):
            word = ctx.directory.rstrip("/") + word[1:]
        argv.append(_fill(word, values))
    return tuple(argv)


def _shell_text(template: str, ctx: FormatContext, env: dict[str, str], inner: str | None) -> str:
    tokens: list[Token] = []
    text = _placeholders(template, tokens)
    refs: list[str] = []
    for tok in tokens:
        if tok.name == "mda" and inner is not None:
            refs.append(inner)  # the admin's own command text, inlined as upstream
            continue
        name = f"SMTPD_FMT_{sum(k.startswith('SMTPD_FMT_') for k in env)}"
        env[name] = expand_token(tok, ctx, inner)
        refs.append("${" + name + "}")
    return _fill(text, refs)


def build_invocation(req: DeliveryRequest) -> Invocation:
    """argv and environment for `req.command` (and `req.wrapper`)."""
    ctx = FormatContext.from_request(req)
    env = mda_environment(req)
    texts = [req.command] + ([req.wrapper] if req.wrapper is not None else [])
    shell = any(_needs_shell(_placeholders(t, [])) or _assigns(t) for t in texts)
    if not shell:
        argv = _argv(req.command, ctx, None)
        if req.wrapper is not None:
            argv = _argv(req.wrapper, ctx, argv)
        return Invocation(argv, env, False)
    text = _shell_text(req.command, ctx, env, None)
    if req.wrapper is not None:
        text = _shell_text(req.wrapper, ctx, env, text)
    return Invocation(("/bin/sh", "-c", text), env, True)


def _last_line(out: BinaryIO) -> str:
    out.seek(0, os.SEEK_END)
    size = out.tell()
    out.seek(max(0, size - 4096))
    lines = [ln.strip() for ln in out.read().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return ""
    text = lines[-1].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:200]


def _cwd(home: str) -> str:
    return home if home and os.path.isdir(home) else "/"


def deliver_command(req: DeliveryRequest, source: BinaryIO) -> DeliveryResult:
    try:
        inv = build_invocation(req)
    except FormatError as exc:
        return permfail(f"550 5.3.0 Cannot expand mda command: {exc}")
    prepared = prepare(req, source)
    if isinstance(prepared, DeliveryResult):
        return prepared
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                list(inv.argv),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(inv.env),
                cwd=_cwd(req.home),
                close_fds=True,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            return tempfail(f"451 4.3.0 Cannot run mda: {exc.strerror}: {inv.argv[0]}")
        deadline = time.monotonic() + req.timeout
        try:
            complete = _feed(proc, chunks(prepared.prefix, source), deadline)
            rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, TimeoutError):
            _kill(proc)
            return tempfail(f"451 4.3.0 mda timed out after {req.timeout:g}s", "timeout")
        finally:
            if proc.poll() is None:
                _kill(proc)
        return _result(rc, complete, _last_line(out))


def _feed(proc: subprocess.Popen[bytes], data: Iterator[bytes], deadline: float) -> bool:
    """Write the message to stdin until done, EPIPE or the deadline."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()
    os.set_blocking(fd, False)
    complete = True
    try:
        for chunk in data:
            view = memoryview(chunk)
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                _, writable, _ = select.select([], [fd], [], left)
                if not writable:
                    continue
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
    except BrokenPipeError:
        complete = False  # the program stopped reading
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    return complete


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _result(rc: int, complete: bool, last: str) -> DeliveryResult:
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
        return tempfail(f"451 4.3.0 mda terminated by signal {name}", last or None)
    desc = f"exited with status {rc}" + (f" ({_SYSEXITS[rc]})" if rc in _SYSEXITS else "")
    if rc == 0:
        if not complete:
            return tempfail("451 4.3.0 mda exited prematurely", last or None)
        return ok()
    if rc == EX_TEMPFAIL:
        return tempfail(f"451 4.3.0 {last or 'mda ' + desc}", desc)
    return permfail(f"550 5.3.0 {last or 'mda ' + desc}", desc)
