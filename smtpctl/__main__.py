"""smtpctl [-s socket] command [argument ...]"""

from __future__ import annotations

import os
import sys

from smtpctl.client import ControlClient, ControlError, run_and_print
from smtpctl.grammar import GrammarError, parse, usage
from smtpctl.monitor import monitor

DEFAULT_SOCKET = "/var/run/smtpd.sock"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = os.environ.get("SMTPCTL_SOCKET", DEFAULT_SOCKET)
    if args[:1] == ["-s"]:
        if len(args) < 2:
            print(usage(), file=sys.stderr)
            return 1
        path = args[1]
        args = args[2:]
    elif args and args[0].startswith("-s") and len(args[0]) > 2:
        path, args = args[0][2:], args[1:]
    try:
        command = parse(args)
    except GrammarError as exc:
        print(f"smtpctl: {exc}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 1
    if command.client_side:  # encrypt: no daemon needed
        from smtpctl.encrypt import run as encrypt
        return encrypt(list(command.args))
    try:
        client = ControlClient(path)
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    if command.name == "report":
        return _report(client, command.args[0] if command.args else "1h")
    if command.name != "monitor":
        return run_and_print(client, args)

    def fetch() -> list[str]:
        status, out, err = client.run(["show", "stats"])
        if status:
            raise ControlError("\n".join(err))
        return out

    try:
        return monitor(fetch)
    except KeyboardInterrupt:
        return 0
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()


def _report(client: ControlClient, since: str) -> int:
    from smtpctl.report import render
    from smtpd.stat.views import parse_duration

    def fetch(words: list[str]) -> tuple[int, list[str]]:
        status, out, _err = client.run(words)
        return status, out

    try:
        sys.stdout.write(render(fetch, since, parse_duration(since)))
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
