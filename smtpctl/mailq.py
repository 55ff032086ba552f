"""mailq(8): upstream's mailq is `smtpctl show queue`, same lines:

    evpid|family|type|flags|sender|rcpt|dest|ctime|expire|lasttry|retry|runstate|delay|error
"""

from __future__ import annotations

import sys

from smtpctl.client import ControlClient, ControlError
from smtpctl.localconf import load_local


def mailq(config: str | None = None) -> int:
    local = load_local(config)
    try:
        client = ControlClient(local.socket)
    except ControlError:
        print("mailq: smtpd doesn't seem to be running", file=sys.stderr)
        return 1
    try:
        status, out, err = client.run(["show", "queue"])
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()
    for line in out:
        print(line)
    for line in err:
        print(line, file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = None
    if args[:1] == ["-C"] and len(args) > 1:
        config, args = args[1], args[2:]
    # upstream runs `show queue` whatever the arguments (mailq -v, -Ac ...)
    return mailq(config)


if __name__ == "__main__":
    sys.exit(main())
