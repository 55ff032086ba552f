"""file: upstream's plain text tables (table(5)), read by parse_table_line.

* blank lines and ``#`` comments are ignored; a ``# @list`` comment before
  the first entry makes the table a list;
* otherwise the first entry decides: a line with a single word makes a list
  table, a line with a key and a value a mapping;
* in a mapping the key ends at the first blank or colon and the value is
  the rest after blanks: ``root: bob, alice`` (aliases(5)), ``bob pw``;
  ``[::1] name`` keeps the brackets in the key; a key without a value is an
  error and the whole file is refused (upstream "invalid map entry").

update() re-reads the file (``smtpctl update table NAME``); when the new
content is bad the old one stays in use and TableError says why.
"""

from __future__ import annotations

from smtpd.table.service import ALL_SERVICES, Service, TableError
from smtpd.table.static import Entries

MAX_TABLE_FILE = 64 * 1024 * 1024


def parse_table_text(text: str, path: str) -> list[tuple[str, str | None]]:
    items: list[tuple[str, str | None]] = []
    kind: str | None = None  # "list" or "hash"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if kind is None and line[1:].strip() == "@list":
                kind = "list"
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                raise TableError(f"{path}:{lineno}: invalid map entry")
            split = end + 1
        else:
            split = next((i for i, c in enumerate(line) if c in " \t:"), len(line))
        if kind is None:
            kind = "list" if split == len(line) else "hash"
        if kind == "list":
            items.append((line, None))
            continue
        key = line[:split]
        value = line[split + 1:].lstrip(" \t") if split < len(line) else ""
        if not value:
            raise TableError(f"{path}:{lineno}: invalid map entry")
        items.append((key, value))
    return items


class FileBackend:
    services = ALL_SERVICES

    def __init__(self, path: str, subaddr_delim: str = "+") -> None:
        self.path = path
        self._delim = subaddr_delim
        self._entries: Entries | None = None

    def _load(self) -> Entries:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_TABLE_FILE + 1)
        except OSError as e:
            raise TableError(f"{self.path}: {e.strerror or e}") from None
        if len(data) > MAX_TABLE_FILE:
            raise TableError(f"{self.path}: file too large")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
        return Entries(parse_table_text(text, self.path), self._delim)

    @property
    def is_list(self) -> bool:
        return self._get().is_list

    def open(self) -> None:
        if self._entries is None:
            self._entries = self._load()

    def close(self) -> None:
        self._entries = None

    def update(self) -> None:
        self._entries = self._load()  # on error the old entries stay

    def _get(self) -> Entries:
        if self._entries is None:
            self.open()
        assert self._entries is not None
        return self._entries

    def lookup(self, service: Service, key: str) -> str | None:
        return self._get().lookup(service, key)

    def check(self, service: Service, key: str) -> bool:
        return self._get().check(service, key)

    def fetch(self, service: Service) -> tuple[str, ...]:
        return self._get().fetch()
