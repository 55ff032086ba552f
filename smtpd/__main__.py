"""smtpd [-dFhnv] [-D macro=value] [-f file] [-P system] [-T trace]"""

from __future__ import annotations

import asyncio
import os
import sys

from smtpd import __version__, eventloop, log
from smtpd import options as opts
from smtpd.privsep import PrivsepError


def daemonize() -> None:
    """The classic double fork: detach from the terminal and the session."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        options = opts.parse(args)
    except opts.UsageError as exc:
        print(f"smtpd: {exc}", file=sys.stderr)
        return 1
    if options is None:
        print(f"pysmtpd {__version__}\n{opts.usage()}", file=sys.stderr)
        return 0

    from smtpd.config import ConfigError, check_command, load_config

    if options.check_only:
        return check_command(options.config_path, options.macros, options.verbose > 0)

    foreground = options.foreground or (options.proc is not None and options.foreground)
    log.setup(foreground=foreground and not options.syslog_in_foreground,
              verbose=options.verbose > 0)
    logger = log.get()
    try:
        config = load_config(options.config_path, options.macros)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"smtpd: {options.config_path}: {exc.strerror}", file=sys.stderr)
        return 1

    if options.proc is not None:
        from smtpd.proc import run_child
        return run_child(options, config)

    from smtpd.parent import Parent, ParentError

    if not (options.foreground or options.syslog_in_foreground):
        daemonize()
    try:
        children_loop = eventloop.check()
    except eventloop.EventLoopError as exc:
        logger.critical("%s", exc)
        return 1
    logger.debug("debug: children run the %s event loop", children_loop)
    loop = asyncio.new_event_loop()  # the parent's: see smtpd/eventloop.py
    asyncio.set_event_loop(loop)
    parent = Parent(options, config)
    try:
        parent.prepare()
    except (ParentError, PrivsepError) as exc:
        logger.critical("%s", exc)
        return 1
    try:
        return loop.run_until_complete(parent.run())
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
