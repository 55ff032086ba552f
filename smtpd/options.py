"""smtpd's command line: upstream's flags `smtpd [-dFhnv] [-D macro=value]
[-f file] [-P system] [-T trace]`, plus the internal `-x PROC` re-exec entry."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from smtpd.trace import PROFILE_NAMES, TRACE_NAMES, Profile, Trace, parse_profile, parse_trace

DEFAULT_CONFIG = "/etc/smtpd.conf"
PAUSABLE = ("mda", "mta", "smtp")


@dataclass(frozen=True)
class Options:
    foreground: bool
    syslog_in_foreground: bool
    check_only: bool
    verbose: int
    config_path: str
    macros: dict[str, str]
    paused: frozenset[str]
    traces: Trace
    profiles: Profile
    proc: str | None

    def child_argv(self) -> list[str]:
        """The flags a re-exec'd child needs to rebuild the same view."""
        argv = ["-f", self.config_path]
        if self.foreground:
            argv.append("-d")
        argv += ["-v"] * self.verbose
        for k, v in self.macros.items():
            argv += ["-D", f"{k}={v}"]
        for system in sorted(self.paused):
            argv += ["-P", system]
        for t in Trace:
            if t.name and t is not Trace.ALL and self.traces & t:
                argv += ["-T", t.name.lower()]
        for p in Profile:
            if p.name and self.profiles & p:
                argv += ["-T", "profile-" + p.name.lower()]
        return argv


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smtpd", add_help=False,
        usage="smtpd [-dFhnv] [-D macro=value] [-f file] [-P system] [-T trace]")
    p.add_argument("-d", action="store_true", help="do not daemonize, log to stderr")
    p.add_argument("-F", action="store_true", help="do not daemonize, log to syslog")
    p.add_argument("-h", action="store_true", help="print version and usage")
    p.add_argument("-n", action="store_true", help="check the configuration and exit")
    p.add_argument("-v", action="count", default=0, help="verbose logging")
    p.add_argument("-D", action="append", default=[], metavar="macro=value")
    p.add_argument("-f", default=DEFAULT_CONFIG, metavar="file")
    p.add_argument("-P", action="append", default=[], metavar="system",
                   help="start with mda, mta or smtp paused")
    p.add_argument("-T", action="append", default=[], metavar="trace",
                   help=f"trace subsystem ({', '.join(TRACE_NAMES)}) or profile "
                        f"(profile, profile-{', profile-'.join(PROFILE_NAMES)})")
    p.add_argument("-x", default=None, help=argparse.SUPPRESS)
    return p


def usage() -> str:
    return _parser().format_help()


def parse(argv: list[str]) -> Options | None:
    """Options, or None when -h asked for the usage.  Raises UsageError."""
    p = _parser()
    try:
        ns, rest = p.parse_known_args(argv)
    except SystemExit as exc:
        raise UsageError(p.format_usage().strip()) from exc
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}\n" + p.format_usage().strip())
    if ns.h:
        return None
    macros: dict[str, str] = {}
    for item in ns.D:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"-D {item}: expected macro=value")
        macros[name] = value
    for system in ns.P:
        if system not in PAUSABLE:
            raise UsageError(f"-P {system}: accepted systems are {', '.join(PAUSABLE)}")
    traces, profiles = Trace(0), Profile(0)
    for name in ns.T:
        try:
            if name == "profile":
                profiles |= Profile.IMSG
            elif name.startswith("profile-"):
                profiles |= parse_profile(name.removeprefix("profile-"))
            else:
                traces |= parse_trace(name)
        except ValueError as exc:
            raise UsageError(f"-T {name}: {exc}") from None
    return Options(
        foreground=ns.d or (ns.x is not None and ns.d),
        syslog_in_foreground=ns.F, check_only=ns.n, verbose=ns.v, config_path=ns.f,
        macros=macros, paused=frozenset(ns.P), traces=traces, profiles=profiles, proc=ns.x)
