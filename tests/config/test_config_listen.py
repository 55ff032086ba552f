"""resolve_listener(): listen words to bind addresses."""

from __future__ import annotations

import socket

import pytest

from smtpd.config.listen import BindAddress, ListenError, resolve_listener
from smtpd.config.model import Family, Listener, ListenerKind


def listener(interface: str, family: Family = Family.ANY, port: int = 25) -> Listener:
    return Listener(kind=ListenerKind.INET, interface=interface, source="f:1", family=family,
                    port=port)


def test_literal_addresses() -> None:
    assert resolve_listener(listener("127.0.0.1", port=2525)) == (
        BindAddress(socket.AF_INET, "127.0.0.1", 2525),)
    assert resolve_listener(listener("::1")) == (BindAddress(socket.AF_INET6, "::1", 25),)
    with pytest.raises(ListenError):
        resolve_listener(listener("::1", Family.INET4))


def test_wildcards() -> None:
    got = resolve_listener(listener("all"))
    assert {(b.family, b.address) for b in got} == {(socket.AF_INET, "0.0.0.0"),
                                                   (socket.AF_INET6, "::")}
    assert resolve_listener(listener("egress", Family.INET4)) == (
        BindAddress(socket.AF_INET, "0.0.0.0", 25),)


def test_loopback_interface_bsd_name() -> None:
    got = resolve_listener(listener("lo0", Family.INET4))
    assert got == (BindAddress(socket.AF_INET, "127.0.0.1", 25),)
    assert got[0].is_loopback


def test_host_name_and_unknown() -> None:
    got = resolve_listener(listener("localhost", Family.INET4))
    assert BindAddress(socket.AF_INET, "127.0.0.1", 25) in got
    with pytest.raises(ListenError, match=r"invalid virtual ip or interface: nosuch\.invalid"):
        resolve_listener(listener("nosuch.invalid"))


def test_socket_listener_has_no_address() -> None:
    with pytest.raises(ListenError):
        resolve_listener(Listener(kind=ListenerKind.SOCKET, interface="socket", source=""))
