"""check_command(): what ``smtpd -n [-v]`` prints (COMPAT.md, Config checks)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from smtpd.config.dump import dump
from smtpd.config.load import ConfigError, load_config


def check_command(
    path: str,
    macros: Mapping[str, str],
    verbose: bool,
    *,
    base_dir: str | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Check ``path``: "configuration OK" on stderr and 0, or every error on
    stderr and 1.  With verbose, the canonical dump goes to stdout first
    (keys redacted).  Features that parse but are not built yet are errors
    here, so that an administrator is never silently ignored."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        config = load_config(path, macros, base_dir)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=err)
        return 1
    if verbose:
        for name in config.unused_macros:
            print(f"warning: macro '{name}' not used", file=err)
        out.write(dump(config, redact=True))
        out.flush()
    if config.warnings:
        for line in config.warnings:
            print(line, file=err)
        return 1
    print("configuration OK", file=err)
    return 0
