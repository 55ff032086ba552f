"""Bounces: RFC 3464 delivery status notifications and when to send them.

from smtpd.bounce import DsnKind, DsnRecipient, build_dsn, should_bounce
"""

from smtpd.bounce.dsn import DsnRecipient, build_dsn, duration, rfc5322_date, write_dsn
from smtpd.bounce.policy import (
    DEFAULT_NOTIFY,
    DsnKind,
    DsnRet,
    Notify,
    parse_notify,
    parse_ret,
    should_bounce,
)

__all__ = [
    "DEFAULT_NOTIFY",
    "DsnKind",
    "DsnRecipient",
    "DsnRet",
    "Notify",
    "build_dsn",
    "duration",
    "parse_notify",
    "parse_ret",
    "rfc5322_date",
    "should_bounce",
    "write_dsn",
]
