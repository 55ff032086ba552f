"""Turn a ``listen on`` word into the addresses to bind.

Upstream (parse.y create_if_listener) tries, in order: an interface or
interface group, an IPv4 address, an IPv6 address, a host name (DNS), and
fails with "invalid virtual ip or interface".  Here:

* ``all``, ``*``, ``egress``: the wildcard addresses.  (OpenBSD's egress
  group is the interfaces of the default route; Linux has no groups, and
  binding the wildcard is what an administrator writing egress wants.)
* an interface name (``eth0``, ``lo``; BSD's ``lo0`` means ``lo``): its
  addresses, IPv4 by ioctl(SIOCGIFADDR), IPv6 from /proc/net/if_inet6;
* an address literal: itself;
* anything else: getaddrinfo().

``family`` (inet4/inet6) filters the result.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass

from smtpd.config import model

SIOCGIFADDR = 0x8915
WILDCARDS = ("all", "*", "egress")
_FAMILIES = {
    model.Family.ANY: (socket.AF_INET, socket.AF_INET6),
    model.Family.INET4: (socket.AF_INET,),
    model.Family.INET6: (socket.AF_INET6,),
}


class ListenError(Exception):
    pass


@dataclass(frozen=True)
class BindAddress:
    family: socket.AddressFamily
    address: str
    port: int

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address.split("%")[0]).is_loopback


def _ipv4_of(name: str) -> list[str]:
    req = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
        except OSError:
            return []
    return [socket.inet_ntoa(res[20:24])]


def _ipv6_of(name: str) -> list[str]:
    out = []
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 6 and fields[5] == name:
                    addr = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                    scope = int(fields[3], 16)
                    text = str(addr) + (f"%{name}" if scope == 0x20 else "")  # link-local
                    out.append(text)
    except OSError:
        pass
    return out


def interface_addresses(name: str) -> list[tuple[socket.AddressFamily, str]] | None:
    """Addresses of interface ``name``, None when there is no such interface."""
    names = {n for _, n in socket.if_nameindex()}
    if name not in names and name == "lo0" and "lo" in names:
        name = "lo"
    if name not in names:
        return None
    return ([(socket.AF_INET, a) for a in _ipv4_of(name)]
            + [(socket.AF_INET6, a) for a in _ipv6_of(name)])


def resolve_listener(listener: model.Listener) -> tuple[BindAddress, ...]:
    """The addresses ``listener`` binds (raises ListenError)."""
    if listener.kind is model.ListenerKind.SOCKET:
        raise ListenError("the socket listener has no network address")
    name = listener.interface
    families = _FAMILIES[listener.family]
    found: list[tuple[socket.AddressFamily, str]]
    if name in WILDCARDS:
        found = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    else:
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
            found = [(socket.AF_INET if ip.version == 4 else socket.AF_INET6, str(ip))]
        except ValueError:
            found = interface_addresses(name) or []
            if not found:
                try:
                    infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM, 0,
                                               socket.AI_ADDRCONFIG)
                except (OSError, UnicodeError):
                    infos = []
                found = [(fam, str(sa[0])) for fam, _, _, _, sa in infos
                         if fam in (socket.AF_INET, socket.AF_INET6)]
    out: list[BindAddress] = []
    for fam, addr in found:
        bind = BindAddress(fam, addr, listener.port)
        if fam in families and bind not in out:
            out.append(bind)
    if not out:
        raise ListenError(f"invalid virtual ip or interface: {name}")
    return tuple(out)
