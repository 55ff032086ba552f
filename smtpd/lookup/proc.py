"""The lookup process: tables, match rules, recipient expansion and
credentials (DESIGN.md §1).  Table failures are temporary answers (451/454),
never crashes: a table on a remote server may come and go."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import replace
from typing import Any

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt

from imsg import Frame
from smtpd.config.ruleset import RuleInput, Ruleset
from smtpd.lookup.dns import client_hostname, make_resolver
from smtpd.lookup.expand import Expander, ExpandError, unknown_recipient
from smtpd.msg import (
    AuthCheck,
    AuthResult,
    CtlReply,
    CtlRequest,
    Empty,
    HostLookup,
    HostResult,
    Msg,
    Proc,
    RcptCheck,
    RcptResult,
)
from smtpd.proc import Child
from smtpd.queue.envelope import EnvelopeError, dump_envelope, load_envelope
from smtpd.table.backend import Table, TableError, TableTempFail, open_table

RCPT_OK = "250 2.1.5 Destination address valid: Recipient ok"
RELAY_DENIED = "550 5.7.1 Delivery not authorized, message refused: relay denied"


def local_names(hostname: str) -> frozenset[str]:
    names = {"localhost", "localhost.localdomain", hostname.lower(),
             hostname.split(".")[0].lower()}
    try:
        names.add(socket.gethostname().lower())
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return frozenset(names)


def check_password(password: str, hashed: str) -> bool:
    """bcrypt ($2b$) and SHA-crypt ($5$, $6$), as `smtpctl encrypt` produces."""
    try:
        if hashed.startswith(("$2a$", "$2b$", "$2y$")):
            return bcrypt.checkpw(password.encode(), hashed.encode())
        if hashed.startswith("$6$"):
            return bool(sha512_crypt.verify(password, hashed))
        if hashed.startswith("$5$"):
            return bool(sha256_crypt.verify(password, hashed))
    except ValueError:
        return False
    return False


class LookupProcess(Child):
    name = Proc.LOOKUP
    needs = frozenset({Proc.PARENT})

    def build(self) -> None:
        self._load_rules()
        self.handle(Proc.PARENT, Msg.PARENT_CONFIG_RELOAD, self._on_reload)
        self.handle(Proc.SMTP, Msg.SMTP_RCPT_CHECK, self._on_rcpt)
        self.handle(Proc.SMTP, Msg.SMTP_AUTH_CHECK, self._on_auth)
        self.handle(Proc.QUEUE, Msg.QUEUE_RCPT_CHECK, self._on_queue_rcpt)
        self.handle(Proc.SMTP, Msg.SMTP_HOST_LOOKUP, self._on_host_lookup)
        self.handle(Proc.CONTROL, Msg.CTL_LOOKUP_REQUEST, self._on_ctl)
        self.resolver = make_resolver()

    def _load_rules(self) -> None:
        delim = self.config.smtp.sub_addr_delim
        tables: dict[str, Table] = {}
        for name, definition in self.config.tables.items():
            table = open_table(definition, delim)
            try:
                table.open()
            except (TableError, TableTempFail, OSError) as exc:
                self.log.warning("lookup: table %s: %s", name, exc)
            tables[name] = table
        self.tables = tables
        self.local_names = local_names(self.config.hostname)
        self.ruleset = Ruleset(self.config, self.tables, self.local_names)

    def _on_reload(self, _payload: Empty, _frame: Frame) -> None:
        new = self.reread_config()
        if new is None:
            return
        old_tables = self.tables
        self.config = new
        self._load_rules()
        for table in old_tables.values():
            with contextlib.suppress(TableError, OSError):
                table.close()
        self.log.info("lookup: rules and tables reloaded")

    def _on_ctl(self, req: CtlRequest, _frame: Frame) -> None:
        status, line = 1, f"smtpctl: unknown lookup request {req.verb}"
        if req.verb == "update-table":
            status, line = self.update_table(req.args[0])
        self.send(Proc.CONTROL, Msg.LOOKUP_CTL_REPLY, CtlReply(req.reqid, status, [line], True))

    def update_table(self, name: str) -> tuple[int, str]:
        """`smtpctl update table NAME`: reload it; on error the old content stays
        and sessions keep running."""
        table = self.tables.get(name)
        if table is None:
            return 1, f"smtpctl: no table named {name}"
        try:
            table.update()
        except (TableError, OSError) as exc:
            self.log.warning("lookup: table %s: update failed: %s", name, exc)
            return 1, "command failed"
        self.log.info("info: table %s updated", name)
        return 0, "command succeeded"

    def _on_host_lookup(self, req: HostLookup, _frame: Frame) -> None:
        self.loop.create_task(self._host_lookup(req))

    async def _host_lookup(self, req: HostLookup) -> None:
        host = await client_hostname(self.resolver, req.address)
        self.send(Proc.SMTP, Msg.LOOKUP_HOST_RESULT,
                  HostResult(req.reqid, host.name, host.confirmed, host.tempfail))

    def _on_rcpt(self, req: RcptCheck, _frame: Frame) -> None:
        ok, reply, envelopes = self.check_rcpt(req)
        self.send(Proc.SMTP, Msg.LOOKUP_RCPT_RESULT, RcptResult(req.reqid, ok, reply, envelopes))

    def _on_queue_rcpt(self, req: RcptCheck, _frame: Frame) -> None:
        ok, reply, envelopes = self.check_rcpt(req)
        self.send(Proc.QUEUE, Msg.LOOKUP_RCPT_RESULT, RcptResult(req.reqid, ok, reply, envelopes))

    def check_rcpt(self, req: RcptCheck) -> tuple[bool, str, list[str]]:
        facts = RuleInput(src="local" if req.local else req.src, rcpt_to=req.rcpt,
                          mail_from=req.sender, helo=req.helo, rdns=req.rdns or None,
                          tag=req.listener_tag, tls=req.tls, auth_user=req.auth_user or None)
        try:
            template = load_envelope(req.template.encode())
        except EnvelopeError as exc:
            # smtp built it: a malformed one is a bug there, but the client
            # only gets a temporary failure.
            self.log.warning("lookup: bad envelope template: %s", exc)
            return False, "451 4.3.0 Temporary failure", []
        try:
            rule = self.ruleset.match(facts)
            if rule is None or rule.reject or rule.action is None:
                self.log.info("lookup: no accepting rule for from=<%s> to=<%s> src=%s",
                              req.sender, req.rcpt, req.src)
                local = facts.dest_domain in self.local_names
                reply = str(unknown_recipient(req.rcpt)) if local or rule else RELAY_DENIED
                return False, reply, []

            def rematch(address: str) -> Any:
                # expanded addresses match as local, internal mail (upstream EF_INTERNAL)
                return self.ruleset.match(replace(facts, rcpt_to=address, internal=True))

            expander = Expander(self.config.actions, self.tables,
                                self.config.smtp.sub_addr_delim, rematch)
            envelopes = expander.expand(rule, template)
        except ExpandError as exc:
            return False, exc.reply, []
        except TableTempFail as exc:
            self.log.warning("lookup: temporary table failure: %s", exc)
            return False, "451 4.3.0 Temporary failure in table lookup", []
        ttl_rule = self.config.actions[rule.action].ttl
        texts = [dump_envelope(replace(e, ttl=ttl_rule) if ttl_rule else e).decode()
                 for e in envelopes]
        return True, RCPT_OK, texts

    def _on_auth(self, req: AuthCheck, _frame: Frame) -> None:
        self.loop.create_task(self._auth(req))

    async def _auth(self, req: AuthCheck) -> None:
        status = "fail"
        try:
            table = self.tables.get(req.table) if req.table else None
            if table is None:
                self.log.warning("lookup: authentication against system accounts is not "
                                 "supported; use `auth <table>`")
                status = "tempfail"
            else:
                creds = table.credentials(req.username)
                if creds is not None:
                    # Hash checks are slow by design: keep the loop responsive.
                    ok = await asyncio.get_running_loop().run_in_executor(
                        None, check_password, req.password, creds.password)
                    status = "ok" if ok else "fail"
        except TableTempFail:
            status = "tempfail"
        self.send(Proc.SMTP, Msg.LOOKUP_AUTH_RESULT, AuthResult(req.reqid, status))
