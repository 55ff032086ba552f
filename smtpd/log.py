"""Logging set-up: stderr in the foreground (-d), syslog otherwise.

Lines follow OpenSMTPD: `info: ...`, `warn: ...`, and events as
`<session id> smtp connected address=...`.  Secrets never reach these calls.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LOGGER = "smtpd"


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.CRITICAL:
            return "fatal: " + msg
        if record.levelno >= logging.WARNING:
            return "warn: " + msg
        if record.levelno <= logging.DEBUG:
            return "debug: " + msg
        return msg


def setup(foreground: bool, verbose: bool, ident: str = "smtpd") -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    handler: logging.Handler
    if foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL)
        handler.ident = f"{ident}[{os.getpid()}]: "
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    return log


def set_verbose(verbose: bool) -> None:
    logging.getLogger(LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)


def get() -> logging.Logger:
    return logging.getLogger(LOGGER)
