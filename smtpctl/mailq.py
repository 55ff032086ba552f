"""mailq(8): upstream's mailq is `smtpctl show queue`, same lines:

    evpid|family|type|flags|sender|rcpt|dest|ctime|expire|lasttry|retry|runstate|delay|error

When the daemon is not running, upstream reads the spool itself (root
only): so does this, with "offline|" as run state and no delay, for plain
and gzip-compressed envelopes; an encrypted one is reported and skipped
("offline encrypted queue is not supported yet", as upstream).
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from collections.abc import Iterator

from smtpctl.client import ControlClient, ControlError, run_and_print
from smtpctl.localconf import load_local
from smtpd.queue.envelope import EnvelopeError, load_envelope
from smtpd.queue.show import queue_line

_EVPID_RE = re.compile(r"^[0-9a-f]{16}$")
GZIP_MAGIC = b"\x1f\x8b"
ENCRYPTED_MAGIC = b"\x01"
def offline_lines(spool: str) -> Iterator[str]:
    """The spool's envelopes read directly (do_show_queue without a daemon)."""
    queue = os.path.join(spool, "queue")

    def fail(exc: OSError) -> None:
        raise exc

    for root, dirs, files in os.walk(queue, onerror=fail):
        dirs.sort()
        for name in sorted(files):
            if not _EVPID_RE.match(name):
                continue
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            if data.startswith(ENCRYPTED_MAGIC):
                print("mailq: offline encrypted queue is not supported yet", file=sys.stderr)
                continue
            try:
                if data.startswith(GZIP_MAGIC):
                    data = gzip.decompress(data)
                env = load_envelope(data, evpid=int(name, 16))
            except (EnvelopeError, OSError, EOFError) as exc:
                print(f"mailq: {name}: {exc}", file=sys.stderr)
                continue
            yield queue_line(env, "offline|")


def mailq(config: str | None = None) -> int:
    local = load_local(config)
    try:
        client = ControlClient(local.socket)
    except ControlError:
        try:
            for line in offline_lines(local.spool):
                print(line)
        except OSError as exc:
            print(f"mailq: {local.spool}: {exc.strerror}", file=sys.stderr)
            return 1
        return 0
    return run_and_print(client, ["show", "queue"])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = None
    if args[:1] == ["-C"] and len(args) > 1:
        config, args = args[1], args[2:]
    # upstream runs `show queue` whatever the arguments (mailq -v, -Ac ...)
    return mailq(config)


if __name__ == "__main__":
    sys.exit(main())
