"""smtpctl's command grammar as one table, as upstream's parser.c.

The client uses it to refuse a bad command with the accepted grammar before
connecting; control uses the same table to re-validate what a client sends
(a client is untrusted input, DESIGN.md §4 / CVE-2025-62875).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from smtpd.stat.views import KEY_RE, parse_duration
from smtpd.trace import PROFILE_NAMES, TRACE_NAMES


class Arg(enum.Enum):
    TRACE = "<subsystem>"
    PROFILE = "<profile>"
    ID = "<msgid|evpid|all>"
    EVPID = "<evpid>"
    MSGID_OR_EVPID = "<msgid|evpid>"
    MSGID = "<msgid>"
    TABLE = "<table>"
    PAUSABLE = "mda|mta|smtp"
    STRING = "<string>"
    STAT_KEY = "<key>"
    DURATION = "<duration>"


_ID_RE = re.compile(r"^(all|[0-9a-fA-F]{1,8}|[0-9a-fA-F]{9,16})$")
_EVPID_RE = re.compile(r"^[0-9a-fA-F]{9,16}$")
_MSGID_RE = re.compile(r"^[0-9a-fA-F]{1,8}$")
_MSGID_OR_EVPID_RE = re.compile(r"^([0-9a-fA-F]{1,8}|[0-9a-fA-F]{9,16})$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _matches(arg: Arg, word: str) -> bool:
    match arg:
        case Arg.TRACE:
            return word in TRACE_NAMES
        case Arg.PROFILE:
            return word in PROFILE_NAMES
        case Arg.ID:
            return bool(_ID_RE.match(word))
        case Arg.EVPID:
            return bool(_EVPID_RE.match(word))
        case Arg.MSGID:
            return bool(_MSGID_RE.match(word))
        case Arg.MSGID_OR_EVPID:
            return bool(_MSGID_OR_EVPID_RE.match(word))
        case Arg.TABLE:
            return bool(_TABLE_RE.match(word))
        case Arg.PAUSABLE:
            return word in ("mda", "mta", "smtp")
        case Arg.STRING:
            return True
        case Arg.STAT_KEY:
            return bool(KEY_RE.match(word))
        case Arg.DURATION:
            try:
                parse_duration(word)
            except ValueError:
                return False
            return True


@dataclass(frozen=True)
class CommandSpec:
    words: tuple[str | Arg, ...]
    name: str
    mutates: bool  # needs root or the daemon's own uid (SO_PEERCRED)
    hidden: bool = False  # plumbing for sendmail(8), not shown in the usage
    client_side: bool = False  # done by smtpctl itself, never sent to control


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]
    mutates: bool
    client_side: bool = False


GRAMMAR: tuple[CommandSpec, ...] = (
    CommandSpec(("encrypt",), "encrypt", False, client_side=True),
    CommandSpec(("encrypt", Arg.STRING), "encrypt", False, client_side=True),
    CommandSpec(("enqueue",), "enqueue", False, hidden=True),
    CommandSpec(("discover", Arg.MSGID_OR_EVPID), "discover", True),
    CommandSpec(("log", "brief"), "log_brief", True),
    CommandSpec(("log", "verbose"), "log_verbose", True),
    CommandSpec(("monitor",), "monitor", False),
    CommandSpec(("pause", "envelope", Arg.ID), "pause_envelope", True),
    CommandSpec(("pause", Arg.PAUSABLE), "pause", True),
    CommandSpec(("profile", Arg.PROFILE), "profile", True),
    CommandSpec(("reload",), "reload", True),
    CommandSpec(("remove", Arg.ID), "remove", True),
    CommandSpec(("report",), "report", False),
    CommandSpec(("report", "--since", Arg.DURATION), "report", False),
    CommandSpec(("resume", "envelope", Arg.ID), "resume_envelope", True),
    CommandSpec(("resume", Arg.PAUSABLE), "resume", True),
    CommandSpec(("schedule", Arg.ID), "schedule", True),
    CommandSpec(("show", "envelope", Arg.EVPID), "show_envelope", True),
    CommandSpec(("show", "hosts"), "show_hosts", False),
    CommandSpec(("show", "hoststats"), "show_hoststats", False),
    CommandSpec(("show", "message", Arg.MSGID_OR_EVPID), "show_message", True),
    CommandSpec(("show", "queue"), "show_queue", False),
    CommandSpec(("show", "relays"), "show_relays", False),
    CommandSpec(("show", "routes"), "show_routes", False),
    CommandSpec(("show", "profile"), "show_profile", False),
    CommandSpec(("show", "stats"), "show_stats", False),
    CommandSpec(("show", "stats", "--history", Arg.STAT_KEY), "show_stats_history", False),
    CommandSpec(("show", "stats", "--history-keys"), "show_stats_history_keys", False),
    CommandSpec(("show", "stats", "--history", Arg.STAT_KEY, "--since", Arg.DURATION),
                "show_stats_history", False),
    CommandSpec(("show", "status"), "show_status", False),
    CommandSpec(("stop",), "stop", True),
    CommandSpec(("trace", Arg.TRACE), "trace", True),
    CommandSpec(("uncorrupt", Arg.MSGID), "uncorrupt", True),
    CommandSpec(("unprofile", Arg.PROFILE), "unprofile", True),
    CommandSpec(("update", "table", Arg.TABLE), "update_table", True),
    CommandSpec(("untrace", Arg.TRACE), "untrace", True),
)


class GrammarError(Exception):
    pass


def usage() -> str:
    lines = ["usage: smtpctl [-s socket] command [argument ...]", "commands:"]
    for spec in GRAMMAR:
        if spec.hidden:
            continue
        lines.append("    " + " ".join(w.value if isinstance(w, Arg) else w
                                       for w in spec.words))
    lines.append(f"subsystems: {', '.join(TRACE_NAMES)}")
    lines.append(f"profiles: {', '.join(PROFILE_NAMES)}")
    return "\n".join(lines)


def parse(words: list[str] | tuple[str, ...]) -> Command:
    for spec in GRAMMAR:
        if len(spec.words) != len(words):
            continue
        args: list[str] = []
        for want, word in zip(spec.words, words, strict=True):
            if isinstance(want, Arg):
                if not _matches(want, word):
                    break
                args.append(word)
            elif want != word:
                break
        else:
            return Command(spec.name, tuple(args), spec.mutates, spec.client_side)
    raise GrammarError(f"invalid command: {' '.join(words) or '(none)'}")
