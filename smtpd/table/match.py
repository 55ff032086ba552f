"""Matching and result parsing, as upstream's table.c, util.c and to.c.

In every ``*_match(key, entry)`` the key comes from the session and the
entry from the table (upstream's s1/s2 convention).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from smtpd.table.service import TableTempFail


@dataclass(frozen=True)
class MailAddr:
    user: str
    domain: str

    def __str__(self) -> str:
        return f"{self.user}@{self.domain}" if self.domain else self.user


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # a crypt(3)/bcrypt hash for listeners, cleartext for relays


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: int
    gid: int
    directory: str


def hostname_match(hostname: str, pattern: str) -> bool:
    """upstream hostname_match(): case-insensitive, ``*`` skips up to the
    first occurrence of the next pattern character, so ``*.example.org``
    matches ``a.example.org`` but not ``a.b.example.org``."""
    h, p = hostname.lower(), pattern.lower()
    i = j = 0
    while j < len(p) and i < len(h):
        if p[j] == "*":
            while j < len(p) and p[j] == "*":
                j += 1
            nxt = p[j] if j < len(p) else ""
            while i < len(h) and h[i] != nxt:
                i += 1
            continue
        if p[j] != h[i]:
            return False
        i += 1
        j += 1
    return i == len(h) and j == len(p)


def parse_mailaddr(text: str) -> MailAddr | None:
    """upstream text_to_mailaddr(): ``user@domain``, ``@domain`` or ``user``."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    user, sep, domain = text.rpartition("@")
    if not sep:
        user, domain = text, ""
    if not user and not domain and text:
        return None
    return MailAddr(user=user, domain=domain.lower())


def mailaddr_match(key: str, entry: str, subaddr_delim: str = "+") -> bool:
    """upstream mailaddr_match(): an entry without a domain matches any
    domain, one without a user any user; a +tag in the session address is
    ignored unless the entry has one too."""
    m1, m2 = parse_mailaddr(key), parse_mailaddr(entry)
    if m1 is None or m2 is None:
        return False
    if not m2.user and not m2.domain:
        return True
    if m2.domain and not hostname_match(m1.domain, m2.domain):
        return False
    if m2.user:
        user = m1.user
        if subaddr_delim not in m2.user:
            user = user.split(subaddr_delim, 1)[0]
        if user.lower() != m2.user.lower():
            return False
    return True


@lru_cache(maxsize=4096)
def parse_netaddr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address or CIDR network; ``[v6]`` and ``ipv6:`` prefixes allowed."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].replace("]", "", 1)
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def netaddr_match(key: str, entry: str) -> bool:
    """upstream table_netaddr_match(): the session address in the entry's
    network (same family); identical strings always match."""
    if key.lower() == entry.lower():
        return True
    net = parse_netaddr(entry)
    addr = parse_netaddr(key)
    if net is None or addr is None or net.version != addr.version:
        return False
    return addr.network_address in net


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str] | None:
    flags = 0
    if pattern.startswith("(?i)"):
        flags, pattern = re.IGNORECASE, pattern[4:]
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None  # upstream: a pattern that does not compile never matches


def regex_match(key: str, pattern: str) -> bool:
    """upstream table_regex_match(): extended regex search, ``(?i)`` prefix
    for case-insensitive."""
    compiled = _compile(pattern)
    return compiled is not None and compiled.search(key) is not None


def split_list(value: str) -> tuple[str, ...]:
    """Comma-separated entries (aliases(5) and senders lines); commas inside
    double quotes do not split (``"|cmd a, b"``)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for c in value:
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(c)
    out.append("".join(cur).strip())
    return tuple(item for item in out if item)


def parse_credentials(key: str, value: str) -> Credentials:
    """``user:secret`` or, without a colon, the key is the user (table.c)."""
    if len(value) < 3:
        raise TableTempFail(f"malformed credentials for {key}")
    user, sep, secret = value.partition(":")
    if not sep:
        return Credentials(username=key, password=value)
    if not user or not secret:
        raise TableTempFail(f"malformed credentials for {key}")
    return Credentials(username=user, password=secret)


def parse_userinfo(key: str, value: str) -> UserInfo:
    """``uid:gid:home`` (upstream text_to_userinfo on "key:value")."""
    parts = value.split(":", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or not parts[2]:
        raise TableTempFail(f"malformed userinfo for {key}: {value!r}")
    return UserInfo(username=key, uid=int(parts[0]), gid=int(parts[1]), directory=parts[2])


def parse_mailaddrmap(key: str, value: str) -> tuple[MailAddr, ...]:
    out = []
    for item in split_list(value.replace(" ", ",").replace("\t", ",")):
        addr = parse_mailaddr(item)
        if addr is None:
            raise TableTempFail(f"malformed address in mapping for {key}: {item!r}")
        out.append(addr)
    return tuple(out)
