"""makemap(8) and newaliases(8).

Upstream compiles a table(5) text file into a Berkeley db file that a
`table NAME db:FILE` line reads.  pysmtpd has no db backend: its `file:`
tables are read (and re-read by `smtpctl update table NAME`) as text, so
there is nothing to compile.  Our choice, so that scripts and habits keep
working:

    makemap [-U] [-d dbtype] [-o file] [-t aliases|set] file

checks the file as the daemon would read it (table(5); with -t aliases each
value must also be a non-empty alias list) and reports the first error as
"file:line: message" with exit 1.  -o writes a normalized copy (one
"key<TAB>value" or "key" line per entry, atomically, mode 0644) that a
`file:` table can use; without -o nothing is written.  -U prints the
entries on stdout in the same form.  -d is accepted and ignored.

newaliases checks the aliases table of the configuration (the file behind
`table aliases file:...`, else /etc/mail/aliases), prints how many aliases
it holds, and when the daemon runs asks it to reload the table
(`smtpctl update table aliases`), as upstream does after rebuilding.
"""

from __future__ import annotations

import os
import sys
import tempfile

from smtpctl.client import ControlClient, ControlError
from smtpctl.localconf import load_local
from smtpctl.sendmail import UsageError, getopt
from smtpd.table.file import parse_table_text
from smtpd.table.match import split_list
from smtpd.table.service import TableError

DEFAULT_ALIASES = "/etc/mail/aliases"
USAGE = "usage: makemap [-U] [-d dbtype] [-o dbfile] [-t type] file"

Entries = list[tuple[str, str | None]]


def read_table(path: str, aliases: bool) -> Entries:
    """The entries of a table(5) file; TableError names file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise TableError(f"{path}: {reason}") from None
    entries = parse_table_text(text, path)
    if aliases:
        for key, value in entries:
            if value is None or not split_list(value):
                raise TableError(f"{path}: {key}: invalid alias entry")
    return entries


def format_entries(entries: Entries) -> list[str]:
    return [key if value is None else f"{key}\t{value}" for key, value in entries]


def write_atomically(path: str, lines: list[str]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".makemap.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def makemap(argv: list[str]) -> int:
    try:
        opts, files = getopt(argv, "d:o:t:U")
    except UsageError as exc:
        print(f"makemap: {exc}\n{USAGE}", file=sys.stderr)
        return 1
    out: str | None = None
    aliases = dump = False
    for ch, arg in opts:
        if ch == "o":
            out = arg
        elif ch == "t":
            if arg not in ("aliases", "set"):
                print(f"makemap: unsupported type {arg}", file=sys.stderr)
                return 1
            aliases = arg == "aliases"
        elif ch == "U":
            dump = True
    if len(files) != 1:
        print(USAGE, file=sys.stderr)
        return 1
    try:
        entries = read_table(files[0], aliases)
        lines = format_entries(entries)
        if out is not None:
            write_atomically(out, lines)
    except (TableError, OSError) as exc:
        print(f"makemap: {exc}", file=sys.stderr)
        return 1
    if dump:
        for line in lines:
            print(line)
    return 0


def aliases_path(config: str | None) -> tuple[str, str]:
    """(socket, aliases file) from the configuration."""
    local = load_local(config)
    path = DEFAULT_ALIASES
    if local.config is not None:
        table = local.config.tables.get("aliases")
        if table is not None and table.backend == "file" and table.config:
            path = table.config
    return local.socket, path


def newaliases(config: str | None = None) -> int:
    socket, path = aliases_path(config)
    try:
        entries = read_table(path, aliases=True)
    except TableError as exc:
        print(f"newaliases: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: {len(entries)} aliases")
    try:
        client = ControlClient(socket)
    except ControlError:
        print("newaliases: smtpd is not running: the aliases are read at its next start",
              file=sys.stderr)
        return 0
    try:
        _status, _out, err = client.run(["update", "table", "aliases"])
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()
    for line in err:
        print(f"newaliases: {line}", file=sys.stderr)
    # upstream: the exit status is the file's; the reload's is only reported
    return 0


def main(argv: list[str] | None = None) -> int:
    return makemap(list(sys.argv[1:] if argv is None else argv))


def newaliases_main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = args[1] if args[:1] == ["-C"] and len(args) > 1 else None
    return newaliases(config)


if __name__ == "__main__":
    sys.exit(main())
