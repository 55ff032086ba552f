"""Shared helpers for the mda tests (imported by name: no conftest clash)."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from smtpd.mda.types import DeliveryMethod, DeliveryRequest

MakeReq = Callable[..., DeliveryRequest]


def req_factory(tmp_path: Any) -> MakeReq:
    base = DeliveryRequest(
        evpid=0x51E7B46600000001,
        sender="a@b.test",
        rcpt="acc1@acc.test",
        orig_rcpt="acc1+tag@acc.test",
        user=pwd.getpwuid(os.getuid()).pw_name,
        uid=os.getuid(),
        gid=os.getgid(),
        home=str(tmp_path),
        method=DeliveryMethod.MAILDIR,
        hostname="vm.test",
        maildir=str(tmp_path / "Maildir"),
        mbox_path=str(tmp_path / "mbox"),
        timeout=10.0,
    )

    def make(**kw: Any) -> DeliveryRequest:
        return replace(base, **kw)

    return make
