"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the HTTPS policy fetch,
policy parsing, MX matching and a per-domain cache.

    sts = MtaSts(resolver, log=log.info)
    policy = await sts.policy("example.org")      # None: no usable policy
    if policy and policy.mode is Mode.ENFORCE and not policy.matches(mx): ...

The parsing is sans-IO (``parse_txt``, ``parse_policy``, ``mx_matches``);
``fetch_policy`` is a minimal HTTPS/1.0 GET over asyncio (names resolved
with our resolver, so that tests map ``mta-sts.<domain>`` to a local
server).  ``port`` and ``ca_file`` are constructor parameters: the daemon
uses 443 and the system trust store; tests pass their own.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from smtpd.lookup.mx import RouteError, resolve_addresses

# RFC 8461 §3.2: max_age up to 31557600 (one year)
MAX_AGE_LIMIT = 31557600
# §3.3 suggests 64 KiB for the policy body and a timeout of about a minute
MAX_POLICY_SIZE = 65536
FETCH_TIMEOUT = 60.0
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_KEY = re.compile(r"[A-Za-z0-9_.-]+\Z")


class PolicyError(Exception):
    """A TXT record, policy file or fetch that gives no usable policy."""


class Mode(enum.Enum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True)
class Policy:
    mode: Mode
    max_age: int
    mx: tuple[str, ...]  # lower case patterns, "*.example.org" allowed

    def matches(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records; None when there is no
    usable record (§3.1: records not starting with ``v=STSv1`` are ignored;
    not exactly one left, or a malformed one, means no policy)."""
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not _KEY.match(key):
            return None
        fields.setdefault(key, value)
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    return ident if _ID.match(ident) else None


def parse_policy(text: str) -> Policy:
    """RFC 8461 §3.2: ``key: value`` lines (LF or CRLF); unknown keys are
    ignored, ``mx`` may repeat; version, mode and max_age are required and
    ``mx`` too unless the mode is none."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip(" \t")
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(" \t"), value.strip(" \t")
        if not sep or not _KEY.match(key):
            raise PolicyError(f"malformed policy line: {line[:60]!r}")
        if key == "mx":
            if not value:
                raise PolicyError("empty mx pattern")
            mx.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError("policy version is not STSv1")
    try:
        mode = Mode(values.get("mode", ""))
    except ValueError:
        raise PolicyError(f"bad policy mode {values.get('mode')!r}") from None
    age = values.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10):
        raise PolicyError(f"bad max_age {age!r}")
    if mode is not Mode.NONE and not mx:
        raise PolicyError("policy names no mx")
    return Policy(mode, min(int(age), MAX_AGE_LIMIT), tuple(mx))


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: an exact name, or ``*.`` followed by a domain matching exactly
    one more label on the left."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


async def fetch_txt(resolver: dns.asyncresolver.Resolver, domain: str) -> str | None:
    """The policy id published for ``domain``; None when none (or DNS fails:
    §5.1, a failed lookup falls back to the cached policy)."""
    try:
        answer = await resolver.resolve(f"_mta-sts.{domain}.", "TXT")
    except dns.exception.DNSException:
        return None
    records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    return parse_txt(records)


async def fetch_policy(resolver: dns.asyncresolver.Resolver, domain: str, *,
                       port: int = 443, ca_file: str | None = None,
                       timeout: float = FETCH_TIMEOUT,
                       limit: int = MAX_POLICY_SIZE) -> Policy:
    """GET ``https://mta-sts.<domain>/.well-known/mta-sts.txt``, the
    certificate verified for that name (§3.3); no redirects; 200 and
    ``text/plain`` only.  PolicyError for anything else."""
    host = f"mta-sts.{domain}"
    try:
        addresses = await resolve_addresses(resolver, host)
    except RouteError as exc:
        raise PolicyError(f"cannot resolve {host}") from exc
    if not addresses:
        raise PolicyError(f"no address for {host}")
    ctx = ssl.create_default_context(cafile=ca_file)
    request = (f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n"
               "User-Agent: pysmtpd\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                addresses[0], port, ssl=ctx, server_hostname=host)
            try:
                writer.write(request.encode("ascii"))
                await writer.drain()
                # HTTP/1.0: the server closes, no chunked coding (RFC 9112 §6.1)
                data = await reader.read(limit + 16384)
                while len(data) <= limit + 16384:
                    more = await reader.read(65536)
                    if not more:
                        break
                    data += more
            finally:
                writer.close()
    except (OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
        raise PolicyError(f"fetching https://{host}/.well-known/mta-sts.txt: {exc}") from exc
    return parse_policy(_http_body(data, limit))


def _http_body(data: bytes, limit: int) -> str:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise PolicyError("truncated HTTP response")
    lines = head.decode("iso-8859-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        raise PolicyError("malformed HTTP response")
    if status[1] != "200":
        # §3.3: redirects are not followed; anything but 200 is no policy
        raise PolicyError(f"HTTP status {status[1]}")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "text/plain":
        raise PolicyError(f"policy media type is {ctype or 'missing'}, not text/plain")
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > limit:
            raise PolicyError("policy too large")
        body = body[:int(length)]
    if len(body) > limit:
        raise PolicyError("policy too large")
    return body.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Cached:
    ident: str
    policy: Policy
    expires: float


class MtaSts:
    """Policies by domain, cached for their ``max_age`` and refreshed when
    the TXT id changes (§5.1).  One per smtp process."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, *, port: int = 443,
                 ca_file: str | None = None, timeout: float = FETCH_TIMEOUT,
                 retry: float = 300.0, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.port = port
        self.ca_file = ca_file
        self.timeout = timeout
        self.retry = retry  # seconds before a failed fetch of one id is tried again
        self.clock = clock
        self._log = log or (lambda line: None)
        self._cache: dict[str, _Cached] = {}
        self._failed: dict[str, tuple[str, float]] = {}
        # one lookup per domain at a time: concurrent relays to a domain
        # share it instead of fetching the same policy N times
        self._inflight: dict[str, asyncio.Future[Policy | None]] = {}
        self.fetches = 0

    def cached(self, domain: str) -> Policy | None:
        c = self._cache.get(domain.lower())
        if c is None or c.expires <= self.clock():
            return None
        return c.policy

    async def policy(self, domain: str) -> Policy | None:
        domain = domain.lower().rstrip(".")
        running = self._inflight.get(domain)
        if running is not None:
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                if not running.cancelled():
                    raise  # we were cancelled
            return await self.policy(domain)  # the leader was: look up ourselves
        fut: asyncio.Future[Policy | None] = asyncio.get_running_loop().create_future()
        self._inflight[domain] = fut
        try:
            result = await self._policy(domain)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del self._inflight[domain]

    async def _policy(self, domain: str) -> Policy | None:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= now:
            del self._cache[domain]
            cached = None
        ident = await fetch_txt(self.resolver, domain)
        if ident is None:
            # §5.1: no record (or a DNS failure): a cached policy still holds
            return cached.policy if cached else None
        if cached is not None and cached.ident == ident:
            return cached.policy
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == ident and failed[1] > now:
            return cached.policy if cached else None
        try:
            self.fetches += 1
            policy = await fetch_policy(self.resolver, domain, port=self.port,
                                        ca_file=self.ca_file, timeout=self.timeout)
        except PolicyError as exc:
            self._failed[domain] = (ident, now + self.retry)
            self._log(f"smtp-out: MTA-STS policy of {domain} unavailable: {exc}")
            return cached.policy if cached else None
        self._failed.pop(domain, None)
        self._cache[domain] = _Cached(ident, policy, now + policy.max_age)
        self._log(f"smtp-out: MTA-STS policy of {domain} id={ident} mode={policy.mode.value} "
                  f"max_age={policy.max_age}")
        return policy
