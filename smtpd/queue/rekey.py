"""Rewrite a stopped spool with new queue settings (issue 8: key rotation,
migration): ``python -m smtpd.queue.rekey --spool DIR [--compression]
[--encrypt]``.

Keys come from standard input, never from argv (visible in ps): with
``--encrypt`` the first line is the new key; every further line is an old
key accepted for reading. Without ``--encrypt`` every line is an old key,
and the spool is rewritten unencrypted. Run it only while smtpd is stopped.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from smtpd.queue.errors import QueueError
from smtpd.queue.front import QueueFront
from smtpd.queue.fs import FsBackend


def main(argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin) -> int:
    ap = argparse.ArgumentParser(prog="python -m smtpd.queue.rekey", description=__doc__)
    ap.add_argument("--spool", type=Path, required=True)
    ap.add_argument("--compression", action="store_true", help="gzip every file")
    ap.add_argument("--encrypt", action="store_true", help="encrypt with the first key")
    args = ap.parse_args(argv)
    keys = [line.rstrip("\r\n") for line in stdin if line.strip()]
    if args.encrypt and not keys:
        print("rekey: --encrypt needs the new key on standard input", file=sys.stderr)
        return 1
    new_key = keys.pop(0) if args.encrypt else None
    try:
        front = QueueFront(FsBackend(args.spool), spool=args.spool,
                           compression=args.compression, encryption_key=new_key, old_keys=keys)
        count = front.rewrite_all()
    except QueueError as exc:
        print(f"rekey: {exc}", file=sys.stderr)
        return 1
    bad = sum(1 for _ in front.corrupted())
    print(f"{count} files rewritten, {bad} messages in corrupt/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
