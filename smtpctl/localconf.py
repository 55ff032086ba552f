"""Where the local commands (sendmail, mailq, newaliases, makemap) find the
daemon: its control socket, spool and mail name, read from smtpd.conf.

Upstream compiles the paths in; pysmtpd's config may move them (`queue path`,
`control socket`), so the commands read the same file the daemon does:
-C FILE, else $SMTPCTL_CONFIG, else /etc/smtpd.conf.  $SMTPCTL_SOCKET wins
for the socket, as it does for smtpctl.  An unreadable or broken config is
not fatal: the compiled-in defaults are used, as upstream always does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from smtpd.config.load import ConfigError, default_hostname, load_config
from smtpd.config.model import Config

DEFAULT_CONFIG = "/etc/smtpd.conf"
DEFAULT_SOCKET = "/var/run/smtpd.sock"
DEFAULT_SPOOL = "/var/spool/smtpd"


@dataclass(frozen=True)
class Local:
    socket: str
    spool: str
    hostname: str
    config: Config | None

    @property
    def offline_dir(self) -> str:
        return os.path.join(self.spool, "offline")


def load_local(config_path: str | None = None) -> Local:
    path = config_path or os.environ.get("SMTPCTL_CONFIG") or DEFAULT_CONFIG
    config: Config | None
    try:
        # relative paths: against the current directory, as smtpd does
        config = load_config(path, check_files=False)
    except ConfigError:
        config = None
    socket = os.environ.get("SMTPCTL_SOCKET") or (
        config.control_socket if config else DEFAULT_SOCKET)
    spool = config.queue_path if config else DEFAULT_SPOOL
    hostname = config.hostname if config else default_hostname()
    return Local(socket, spool, hostname, config)
