#!/usr/bin/env python3
"""A small smtpd-filters(7) filter, written the way an administrator would
(no pysmtpd imports): registers for mail-from and data-line, rejects one
sender, tags the Subject and adds a header, logs reports to stderr.
Run by the daemon as ``proc-exec``; used by tests/integration/test_filter_proc.py."""

import sys


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    in_headers: dict[str, bool] = {}
    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if line == "config|ready":
            for what in ("filter|smtp-in|mail-from", "filter|smtp-in|data-line",
                         "report|smtp-in|link-connect", "report|smtp-in|tx-begin",
                         "report|smtp-in|link-disconnect"):
                out("register|" + what)
            out("register|ready")
            continue
        if line.startswith("config|"):
            continue
        fields = line.split("|")
        kind, version, event, sid = fields[0], fields[1], fields[4], fields[5]
        if kind == "report":
            print(f"report {version} {event} {sid}", file=sys.stderr, flush=True)
            continue
        token = fields[6]
        if event == "mail-from":
            sender = "|".join(fields[7:])
            if sender.startswith("blocked@"):
                out(f"filter-result|{sid}|{token}|reject|550 5.7.1 blocked by pyfilter")
            else:
                out(f"filter-result|{sid}|{token}|proceed")
        elif event == "data-line":
            text = "|".join(fields[7:])
            key = sid + token
            if key not in in_headers:
                in_headers[key] = True
                out(f"filter-dataline|{sid}|{token}|X-PyFilter: seen")
            if text == ".":
                in_headers.pop(key, None)
            elif in_headers.get(key) and text == "":
                in_headers[key] = False
            elif in_headers.get(key) and text.lower().startswith("subject: "):
                text = "Subject: [filtered] " + text[9:]
            out(f"filter-dataline|{sid}|{token}|{text}")


if __name__ == "__main__":
    main()
