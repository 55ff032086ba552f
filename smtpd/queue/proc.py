"""The queue process: the only one that opens spool files (DESIGN.md §4).

It hands smtp a writable fd for each incoming message, commits messages and
envelopes durably before smtp may say 250, loads the spool into the scheduler
at start, runs deliveries through the parent, and turns permanent failures
and expiries into bounces.  A corrupt spool file is moved aside and reported,
never fatal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from imsg import Frame
from smtpd import privsep
from smtpd.bounce import DsnKind, DsnRecipient, Notify, should_bounce, write_dsn
from smtpd.bounce import DsnRet as BounceRet
from smtpd.mda.maildir import maildir_name
from smtpd.msg import (
    CtlReply,
    CtlRequest,
    DeliveryResult,
    DeliveryStart,
    Evpids,
    MessageCommit,
    MessageCommitted,
    MessageCreated,
    MessageRef,
    MessageSchedule,
    Msg,
    MsgError,
    MtaResult,
    MtaTransfer,
    ParentDeliveryResult,
    Proc,
    RcptCheck,
    RcptResult,
    Request,
    RequestFailed,
    chunk_lines,
)
from smtpd.proc import QUEUE_KEY_FD_ENV, Child
from smtpd.queue.cluster import LEASE_LOST, open_backend, takeover_tick
from smtpd.queue.envelope import (
    DeliveryType,
    DsnNotify,
    DsnRet,
    Envelope,
    EnvelopeError,
    dump_envelope,
    load_envelope,
    render_upstream,
)
from smtpd.queue.errors import LeaseLost, NotFound, QueueCorrupt, QueueError
from smtpd.queue.front import CommitBatch, QueueFront
from smtpd.queue.listing import Listings
from smtpd.queue.show import queue_line

TEMPFAIL = "451 4.3.0 Temporary failure"
NO_SPACE = "452 4.3.1 Insufficient system storage"
# Below this much free space in the spool, new messages are refused (4xx)
# so that accepted ones can still be delivered and bounced.
MIN_FREE_BYTES = 64 * 1024 * 1024
SCHEDULE_BATCH = 200      # envelope infos per QUEUE_MESSAGE_SCHEDULE frame
LOAD_STEP = 500           # envelopes loaded per loop iteration at start
UNSENT_MAX = 100_000      # envelopes remembered as never handed out (QueueProcess.unsent)


def scheduler_info(env: Envelope) -> list[int | str]:
    return [env.evpid, env.type.value, env.ctime, env.ttl, env.retry, env.lasttry,
            env.lastbounce]


def _notify(env: Envelope) -> Notify | None:
    if not env.dsn_notify:
        return None
    out = Notify(0)
    for flag, mapped in ((DsnNotify.SUCCESS, Notify.SUCCESS), (DsnNotify.FAILURE, Notify.FAILURE),
                         (DsnNotify.DELAY, Notify.DELAY), (DsnNotify.NEVER, Notify.NEVER)):
        if flag in env.dsn_notify:
            out |= mapped
    return out


class QueueProcess(Child):
    name = Proc.QUEUE
    needs = frozenset({Proc.PARENT, Proc.SCHEDULER, Proc.LOOKUP})
    user = privsep.SMTPQ_USER

    def chroot_dir(self) -> str | None:
        path: str = self.config.queue_path
        return path  # upstream: the queue is chrooted in its spool

    def build_privileged(self) -> None:
        self.key_from_parent: str | None = None
        fd = os.environ.pop(QUEUE_KEY_FD_ENV, None)
        if fd is not None:
            with os.fdopen(int(fd), "rb") as pipe:
                self.key_from_parent = pipe.read().decode()

    def build(self) -> None:
        spool = Path("/" if self.privileged else self.config.queue_path)
        qopts = self.config.queue
        key = (self.key_from_parent or qopts.encryption_key) if qopts.encryption else None
        # issue 14: `queue backend postgres` shares the queue under a node lease
        backend, self.lease = open_backend(qopts, self.config.hostname, spool)
        self.front = QueueFront(backend, spool=spool, compression=qopts.compression,
                                encryption_key=key, old_keys=qopts.old_keys)
        self.spool = spool
        self.hostname = self.config.hostname
        self.inflight: dict[int, float] = {}   # evpid -> delivery start (monotonic)
        self.next_reqid = 1
        # reqid -> (bounce msgid, failed envelope, kind, delete it once bounced)
        self.bounce_pending: dict[int, tuple[int, Envelope, DsnKind, bool]] = {}
        self.loader: Iterator[Envelope] | None = None
        # Crash recovery before READY: once smtp may talk to us, incoming/
        # holds only transactions of this run (recovering later would wipe them).
        self.front.recover()
        h = self.handle
        h(Proc.SMTP, Msg.SMTP_MESSAGE_CREATE, self._on_create)
        h(Proc.SMTP, Msg.SMTP_MESSAGE_OPEN, self._on_open)
        h(Proc.SMTP, Msg.SMTP_MESSAGE_COMMIT, self._on_commit)
        h(Proc.SMTP, Msg.SMTP_MESSAGE_ROLLBACK, self._on_rollback)
        h(Proc.SCHEDULER, Msg.SCHEDULER_ENVELOPE_DELIVER, self._on_deliver)
        h(Proc.SCHEDULER, Msg.SCHEDULER_ENVELOPE_EXPIRE, self._on_expire)
        h(Proc.SCHEDULER, Msg.SCHEDULER_ENVELOPE_REMOVE, self._on_remove)
        h(Proc.SCHEDULER, Msg.SCHEDULER_ENVELOPE_WARN, self._on_warn)
        h(Proc.PARENT, Msg.PARENT_DELIVERY_RESULT, self._on_delivery_result)
        h(Proc.SMTP, Msg.SMTP_MTA_RESULT, self._on_mta_result)
        self.transfers: dict[int, list[int]] = {}   # reqid -> evpids being relayed
        self.commit_batch: list[tuple[MessageCommit, list[int]]] = []
        # msgids of the group commit being written (None: none is)
        self.committing: set[int] | None = None
        # One thread for the fs backend's commit I/O: group commits stay in order.
        self.io = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                        thread_name_prefix="queue-io")
        self.listings = Listings()  # `show queue` walks in progress
        # Local envelopes this process committed and has not handed out yet:
        # their first delivery cannot find an earlier copy, so the maildir
        # skips looking for one (smtpd/mda/maildir.py).  Bounded: past the
        # cap an envelope just gets the look.
        self.unsent: set[int] = set()
        # delivered envelopes waiting for this loop iteration's batched delete
        self.delete_batch: list[tuple[Envelope, str]] = []
        h(Proc.LOOKUP, Msg.LOOKUP_RCPT_RESULT, self._on_bounce_route)
        h(Proc.CONTROL, Msg.CTL_QUEUE_REQUEST, self._on_ctl)

    # -- start-up: recover, then feed the scheduler incrementally ------------------

    def on_live(self) -> None:
        # bounces are enqueued directly, not through an SMTP session: 0, as idle
        for key in ("bounce.session", "bounce.message", "bounce.envelope", "queue.bounce"):
            self.stats.set(key, 0)
        self.loader = self.front.walk()
        self.loaded = 0
        self.loop.call_soon(self._load_step)
        self._start_lease()

    def _load_step(self) -> None:
        assert self.loader is not None
        batch: dict[int, list[list[int | str]]] = {}
        for _ in range(LOAD_STEP):
            env = next(self.loader, None)
            if env is None:
                self._send_schedule(batch)
                self.log.info("queue: %d envelopes loaded from the spool", self.loaded)
                self.loader = None
                self._update_stats()
                return
            batch.setdefault(env.msgid, []).append(scheduler_info(env))
            self.loaded += 1
        self._send_schedule(batch)
        self.loop.call_soon(self._load_step)

    def _send_schedule(self, batch: dict[int, list[list[int | str]]]) -> None:
        for msgid, infos in batch.items():
            for i in range(0, len(infos), SCHEDULE_BATCH):
                self.send(Proc.SCHEDULER, Msg.QUEUE_MESSAGE_SCHEDULE,
                          MessageSchedule(msgid, infos[i:i + SCHEDULE_BATCH]))

    def _start_lease(self) -> None:
        # renewals start with the walk (a long walk must not let the lease
        # lapse); an envelope both walked and taken over is scheduled twice,
        # which the scheduler ignores (it skips evpids it already holds)
        if self.lease is not None:
            self.loop.call_later(self.lease.interval, self._lease_tick)

    def _lease_tick(self) -> None:
        """Renew this node's lease; schedule what nodes that stopped renewing
        left behind (issue 14)."""
        assert self.lease is not None
        batch: dict[int, list[list[int | str]]] = {}
        try:
            for env in takeover_tick(self.lease, self.front):
                batch.setdefault(env.msgid, []).append(scheduler_info(env))
        except LeaseLost as exc:
            # another node delivers our envelopes now: fail closed
            self.log.critical("queue: %s", exc)
            self.exit(1)
        self._send_schedule(batch)
        self.loop.call_later(self.lease.interval, self._lease_tick)

    def _update_stats(self) -> None:
        for key, value in self.front.stats().items():
            self.stats.set(key, value)

    # -- inbound ---------------------------------------------------------------

    def _fail(self, reqid: int, reply: str) -> None:
        self.send(Proc.SMTP, Msg.QUEUE_REQUEST_FAILED, RequestFailed(reqid, reply))

    def _space_ok(self) -> bool:
        try:
            st = os.statvfs(self.spool)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize >= MIN_FREE_BYTES

    def _on_create(self, req: Request, _frame: Frame) -> None:
        if not self._space_ok():
            self.log.warning("queue: refusing new messages: less than %d MB free in the spool",
                             MIN_FREE_BYTES // 2**20)
            return self._fail(req.reqid, NO_SPACE)
        try:
            msgid = self.front.message_create()
        except OSError as exc:
            self.log.warning("queue: cannot create a message: %s", exc)
            return self._fail(req.reqid, TEMPFAIL)
        self.send(Proc.SMTP, Msg.QUEUE_MESSAGE_CREATED, MessageCreated(req.reqid, msgid))

    def _on_open(self, req: MessageRef, _frame: Frame) -> None:
        try:
            fd = self.front.message_fd(req.msgid)
        except (OSError, QueueError) as exc:
            self.log.warning("queue: cannot open message %08x: %s", req.msgid, exc)
            return self._fail(req.reqid, TEMPFAIL)
        self.send(Proc.SMTP, Msg.QUEUE_MESSAGE_FD, MessageRef(req.reqid, req.msgid), fd=fd)

    def _on_commit(self, req: MessageCommit, _frame: Frame) -> None:
        """Commits are gathered for the rest of this loop iteration and made
        durable together (group commit); each is still acknowledged only once
        its own data is on disk."""
        try:
            envs = [self._named(load_envelope(text.encode())) for text in req.envelopes]
            evpids = [self.front.envelope_create(req.msgid, env) for env in envs]
        except (OSError, QueueError, EnvelopeError) as exc:
            self._commit_failed(req.reqid, req.msgid, exc)
            return
        if not self.commit_batch and not self.committing:
            self.loop.call_soon(self._flush_commits)
        self.commit_batch.append((req, evpids))

    def _named(self, env: Envelope) -> Envelope:
        """Choose the Maildir file name now and store it with the envelope, so
        that a redelivery after a crash finds the file instead of writing it
        twice (COMPAT.md §1) without an extra envelope write per delivery."""
        if env.type is DeliveryType.MDA and not env.mda_delivered:
            return dataclasses.replace(env, mda_delivered=maildir_name(self.hostname))
        return env

    def _flush_commits(self) -> None:
        """Write the gathered commits.  With the fs backend the writes, fsyncs
        and renames run in the I/O thread (fsync releases the GIL), so this
        loop goes on serving MAIL, DATA and deliveries meanwhile, and the
        commits that arrive during a flush form the next group."""
        if self.committing is not None or not self.commit_batch:
            return
        batch, self.commit_batch = self.commit_batch, []
        requests = {req.msgid: (req, evpids) for req, evpids in batch}
        # messages per group commit = queue.commit.message / queue.commit.batch
        self.stats.increment("queue.commit.batch")
        self.stats.increment("queue.commit.message", len(batch))
        started = time.monotonic_ns()
        staged = self.front.commit_prepare(list(requests))
        self.committing = set(staged.msgids)
        if not self.front.install_is_threadsafe:
            error: OSError | None = None
            try:
                self.front.commit_install(staged)
            except OSError as exc:
                error = exc
            self._commit_done(requests, staged, error, started)
            return
        future = self.loop.run_in_executor(self.io, self.front.commit_install, staged)

        def done(fut: asyncio.Future[None]) -> None:
            exc = fut.exception()
            if exc is not None and not isinstance(exc, OSError):
                raise exc  # a bug: the loop's exception handler ends the process
            self._commit_done(requests, staged, exc, started)
        future.add_done_callback(done)

    def _commit_done(self, requests: dict[int, tuple[MessageCommit, list[int]]],
                     staged: CommitBatch, error: OSError | None, started: int) -> None:
        # Outside imsg dispatch, so `-T profile` cannot see it: its own
        # duration histogram (writes, fsyncs, renames).
        self.stats.observe("queue.commit.flush", time.monotonic_ns() - started)
        committed = self.front.commit_finish(staged, error)
        self.committing = None
        if self.commit_batch:  # arrived during this flush: the next group
            self.loop.call_soon(self._flush_commits)
        for msgid, result in committed:
            req, evpids = requests[msgid]
            if isinstance(result, Exception):
                self._commit_failed(req.reqid, msgid, result)
                continue
            self._send_schedule({msgid: [scheduler_info(e) for e in result]})
            if len(self.unsent) < UNSENT_MAX:
                self.unsent.update(e.evpid for e in result if e.type is DeliveryType.MDA)
            self.send(Proc.SMTP, Msg.QUEUE_MESSAGE_COMMITTED,
                      MessageCommitted(req.reqid, msgid, evpids))
        self._update_stats()

    def _commit_failed(self, reqid: int, msgid: int, exc: Exception) -> None:
        self.log.warning("queue: commit of %08x failed: %s", msgid, exc)
        self._rollback(msgid)
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        self._fail(reqid, NO_SPACE if full else TEMPFAIL)

    def _rollback(self, msgid: int) -> None:
        try:
            self.front.message_rollback(msgid)
        except (OSError, QueueError) as exc:
            self.log.warning("queue: rollback of %08x: %s", msgid, exc)

    def _on_rollback(self, req: MessageRef, _frame: Frame) -> None:
        if self.committing is not None and req.msgid in self.committing:
            return  # its commit is being written: its outcome decides
        self._rollback(req.msgid)

    # -- delivery --------------------------------------------------------------

    def _load(self, evpid: int) -> Envelope | None:
        """The envelope, or None after telling the scheduler it is gone."""
        try:
            return self.front.envelope_load(evpid)
        except NotFound:
            self._report(evpid, "missing", "", None)
            return None
        except QueueCorrupt as exc:
            self.log.warning("queue: envelope %016x: %s", evpid, exc)
            self._report(evpid, "permfail", str(exc), None)
            return None

    def _report(self, evpid: int, status: str, text: str, env: Envelope | None) -> None:
        self.unsent.discard(evpid)
        info = scheduler_info(env) if env is not None else []
        self.send(Proc.SCHEDULER, Msg.QUEUE_DELIVERY_RESULT,
                  DeliveryResult(evpid, status, info, text))

    def _on_deliver(self, req: Evpids, _frame: Frame) -> None:
        relays: dict[tuple[int, str, str], list[Envelope]] = {}
        for evpid in req.evpids:
            env = self._load(evpid)
            if env is None:
                continue
            if self.lease is not None and not self.lease.may_deliver():
                # a lapsed lease may have been taken over: never deliver on it
                self._report(evpid, "tempfail", LEASE_LOST, env)
                continue
            if env.type is DeliveryType.MTA:
                # one transfer per message, action and destination domain
                domain = env.dest.rpartition("@")[2].lower()
                relays.setdefault((env.msgid, env.dispatcher, domain), []).append(env)
                continue
            if env.type is DeliveryType.BOUNCE:
                self._tempfail(env, "451 4.3.0 Bounce envelope waiting")
                continue
            try:
                if not env.mda_delivered:  # an envelope from before names were chosen
                    env = self._named(env)
                    self.front.envelope_update(env)
                fd = self.front.message_fd_for_delivery(env.msgid)
            except QueueCorrupt as exc:
                self.log.warning("queue: message %08x: %s", env.msgid, exc)
                self.front.corrupt(env.msgid, str(exc))
                self._report(evpid, "permfail", f"554 5.3.0 {exc}", env)
                continue
            except (OSError, QueueError) as exc:
                self._tempfail(env, f"451 4.3.0 Queue error: {exc}")
                continue
            self.inflight[evpid] = time.monotonic()
            first = evpid in self.unsent
            self.unsent.discard(evpid)
            self.send(Proc.PARENT, Msg.QUEUE_DELIVERY_START,
                      DeliveryStart(evpid, dump_envelope(env).decode(), first), fd=fd)
        for (msgid, dispatcher, domain), envs in relays.items():
            self._transfer(msgid, dispatcher, domain, envs)

    # -- relaying (issue 7): the smtp process talks to the next hop --------------

    def _transfer(self, msgid: int, dispatcher: str, domain: str, envs: list[Envelope]) -> None:
        try:
            fd = self.front.message_fd_for_delivery(msgid)
        except QueueCorrupt as exc:
            self.front.corrupt(msgid, str(exc))
            for env in envs:
                self._report(env.evpid, "permfail", f"554 5.3.0 {exc}", env)
            return
        except (OSError, QueueError) as exc:
            for env in envs:
                self._tempfail(env, f"451 4.3.0 Queue error: {exc}")
            return
        reqid = self.next_reqid
        self.next_reqid += 1
        for env in envs:
            self.inflight[env.evpid] = time.monotonic()
        self.transfers[reqid] = [e.evpid for e in envs]
        self.send(Proc.SMTP, Msg.QUEUE_MTA_TRANSFER, MtaTransfer(
            reqid, dispatcher, domain, [dump_envelope(e).decode() for e in envs]), fd=fd)

    def _on_mta_result(self, res: MtaResult, _frame: Frame) -> None:
        expected = set(self.transfers.pop(res.reqid, ()))
        for item in res.results:
            evpid, status, text = item
            if not (isinstance(evpid, int) and isinstance(status, str)
                    and isinstance(text, str)) or evpid not in expected:
                raise MsgError(f"SMTP_MTA_RESULT: bad result {item!r}")
            expected.discard(evpid)
            self._finish(evpid, status, text, relayed=True)
        for evpid in expected:  # smtp must answer for every envelope it was given
            self._finish(evpid, "tempfail", "451 4.3.0 No result from the relay", relayed=True)

    def _on_delivery_result(self, res: ParentDeliveryResult, _frame: Frame) -> None:
        self._finish(res.evpid, res.status, res.text, relayed=False)

    def _finish(self, evpid: int, status: str, text: str, *, relayed: bool) -> None:
        """A delivery attempt ended: remove, retry later, or bounce."""
        started = self.inflight.pop(evpid, None)
        env = self._load(evpid)
        if env is None:
            return
        if not relayed:  # the smtp process logs its own `mta delivery` lines
            self.log.info("%016x mda delivery evpid=%016x from=<%s> to=<%s> rcpt=<%s> "
                          "user=%s delay=%ds result=%s stat=%s", evpid, evpid, env.sender,
                          env.dest, env.rcpt, env.mda_user, int(time.time()) - env.ctime,
                          {"ok": "Ok", "tempfail": "TempFail"}.get(status, "PermFail"), text)
        if started is not None:
            self.stats.observe("queue.delivery.latency", int((time.monotonic() - started) * 1e9))
        if status == "ok":
            # Removed with the others delivered in this loop iteration (one
            # fsync per directory, like commits), reported once durable.
            if not self.delete_batch:
                self.loop.call_soon(self._flush_deletes)
            self.delete_batch.append((env, text))
        elif status == "tempfail":
            self._tempfail(env, text)
        else:
            self._permfail(env, text, DsnKind.FAILED)

    def _tempfail(self, env: Envelope, text: str) -> None:
        env = dataclasses.replace(env, retry=env.retry + 1, lasttry=int(time.time()),
                                  errorline=text)
        try:
            self.front.envelope_update(env)
        except (OSError, QueueError) as exc:
            self.log.warning("queue: envelope %016x update failed: %s", env.evpid, exc)
        self._report(env.evpid, "tempfail", text, env)

    def _permfail(self, env: Envelope, text: str, kind: DsnKind) -> None:
        self._report(env.evpid, "permfail", text, env)
        self._bounce_then_delete(env, text, kind)

    def _flush_deletes(self) -> None:
        batch, self.delete_batch = self.delete_batch, []
        self.stats.increment("queue.delete.batch")
        started = time.monotonic_ns()
        try:
            results: list[bool | Exception] = list(
                self.front.envelope_delete_many([env.evpid for env, _text in batch]))
        except (OSError, QueueError) as exc:
            results = [exc] * len(batch)
        self.stats.observe("queue.delete.flush", time.monotonic_ns() - started)
        for (env, text), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self.log.warning("queue: envelope %016x delete failed: %s", env.evpid, result)
            self._report(env.evpid, "ok", text, env)
        self._update_stats()

    def _delete(self, env: Envelope) -> None:
        try:
            self.front.envelope_delete(env.evpid)
        except (OSError, QueueError) as exc:
            self.log.warning("queue: envelope %016x delete failed: %s", env.evpid, exc)
        self._update_stats()

    # -- bounces ---------------------------------------------------------------

    def _bounce_then_delete(self, env: Envelope, text: str, kind: DsnKind,
                            delete: bool = True) -> None:
        """Build the DSN as a new message, route it through lookup, commit it,
        and only then delete the failed envelope: nothing is lost on a crash."""
        if not should_bounce(env.sender, _notify(env), kind):
            if not env.sender:
                self.log.info("queue: %016x failed with null sender, no bounce (double "
                              "bounce dropped): %s", env.evpid, text)
            if delete:
                self._delete(env)
            return
        try:
            msgid = self.front.message_create()
            fd = self.front.message_fd(msgid)
            with os.fdopen(fd, "wb") as out, self.front.message_open(env.msgid) as original:
                status = _status_of(text, kind)
                write_dsn(out, kind, self.hostname, env.sender,
                          [DsnRecipient(final_rcpt=env.dest if "@" in env.dest else env.rcpt,
                                        orig_rcpt=env.dsn_orcpt or None, status=status,
                                        diagnostic=text)],
                          original,
                          ret=BounceRet.FULL if env.dsn_ret is DsnRet.FULL else BounceRet.HDRS,
                          envid=env.dsn_envid or None,
                          arrival_date=datetime.fromtimestamp(env.ctime, UTC),
                          delay=int(time.time()) - env.ctime)
        except (OSError, QueueError) as exc:
            self.log.warning("queue: cannot build bounce for %016x: %s", env.evpid, exc)
            if delete:
                self._delete(env)
            return
        reqid = self.next_reqid
        self.next_reqid += 1
        self.bounce_pending[reqid] = (msgid, env, kind, delete)
        self.stats.increment("bounce.message")   # upstream's gauges: bounces being made
        self.stats.increment("bounce.envelope")
        template = Envelope(evpid=0, type=DeliveryType.MDA, dispatcher="-", sender="",
                            rcpt=env.sender, dest=env.sender, ctime=int(time.time()),
                            ttl=self.config.queue.ttl, orig_rcpt=env.sender,
                            smtpname=self.hostname, hostname=self.hostname, sockaddr="local",
                            dsn_notify=DsnNotify.NEVER)
        self.send(Proc.LOOKUP, Msg.QUEUE_RCPT_CHECK, RcptCheck(
            reqid=reqid, listener_tag="", local=True, src="local", rdns="", helo=self.hostname,
            tls=False, auth_user="", sender="", rcpt=env.sender,
            template=dump_envelope(template).decode()))

    def _on_bounce_route(self, res: RcptResult, _frame: Frame) -> None:
        pending = self.bounce_pending.pop(res.reqid, None)
        if pending is None:
            return
        msgid, env, kind, delete = pending
        self.stats.decrement("bounce.message")
        self.stats.decrement("bounce.envelope")
        if not res.ok:
            self.log.warning("queue: bounce for %016x to <%s> undeliverable (%s): dropped",
                             env.evpid, env.sender, res.reply)
            self._rollback(msgid)
        else:
            try:
                for envelope_text in res.envelopes:
                    self.front.envelope_create(msgid,
                                               self._named(load_envelope(envelope_text.encode())))
                self.front.message_commit(msgid)
                committed = [self.front.envelope_load(e)
                             for e in self.front.message_envelopes(msgid)]
                self._send_schedule({msgid: [scheduler_info(e) for e in committed]})
                self.stats.increment("queue.bounce")
                self.log.info("%016x bounce %s to=<%s> msgid=%08x", env.evpid, kind.value,
                              env.sender, msgid)
            except (OSError, QueueError, EnvelopeError) as exc:
                self.log.warning("queue: bounce commit failed: %s", exc)
                self._rollback(msgid)
        if delete:
            self._delete(env)

    # -- scheduler decisions -------------------------------------------------

    def _on_expire(self, req: Evpids, _frame: Frame) -> None:
        for evpid in req.evpids:
            env = self._load(evpid)
            if env is None:
                continue
            self.log.info("%016x envelope expired", evpid)
            # COMPAT.md: 6.8 reports an expiry as "delayed", status 4.4.7.
            self._bounce_then_delete(env, "450 4.4.7 Envelope expired", DsnKind.DELAYED)
            self._report(evpid, "done", "expired", env)

    def _on_warn(self, req: Evpids, _frame: Frame) -> None:
        for evpid in req.evpids:
            env = self._load(evpid)
            if env is None:
                continue
            self._bounce_then_delete(env, env.errorline or "451 4.4.7 Delivery delayed",
                                     DsnKind.DELAYED, delete=False)
            with contextlib.suppress(OSError, QueueError):
                self.front.envelope_update(dataclasses.replace(env, lastbounce=int(time.time())))

    def _on_remove(self, req: Evpids, _frame: Frame) -> None:
        for evpid in req.evpids:
            env = self._load(evpid)
            if env is None:
                continue
            self._delete(env)
            self.log.info("%016x envelope removed", evpid)
            self._report(evpid, "done", "removed", env)

    # -- smtpctl ------------------------------------------------------------------

    def _on_ctl(self, req: CtlRequest, _frame: Frame) -> None:
        more = False
        try:
            if req.verb in ("list", "list-next", "list-stop"):
                lines, status, more = self._listing_page(req)
            else:
                lines, status = self._ctl_lines(req)
        except (OSError, QueueError) as exc:
            lines, status = [f"smtpctl: {exc}"], 1
        self._ctl_send(req.reqid, status, lines, more)

    def _ctl_send(self, reqid: int, status: int, lines: list[str], more: bool = False) -> None:
        for chunk, last in chunk_lines(lines):
            self.send(Proc.CONTROL, Msg.QUEUE_CTL_REPLY,
                      CtlReply(reqid, status, chunk, last, more))

    def _listing_page(self, req: CtlRequest) -> tuple[list[str], int, bool]:
        """`show queue` a page at a time (smtpd/control/listing.py): "list"
        opens a walk named by its request id, "list-next <id>" continues it,
        "list-stop <id>" drops it.  (lines, status, more)."""
        if req.verb == "list":
            walk = req.reqid
            self.listings.open(walk, self.front.walk())
        else:
            try:
                walk = int(req.args[0])
            except (IndexError, ValueError):
                return ["smtpctl: bad listing request"], 1, False
            if req.verb == "list-stop":
                self.listings.close(walk)
                return [], 0, False
        page = self.listings.page(walk)
        if page is None:
            return ["smtpctl: the listing was dropped (idle, or too many at once)"], 1, False
        envs, more = page
        return [self._queue_line(env) for env in envs], 0, more

    def _ctl_lines(self, req: CtlRequest) -> tuple[list[str], int]:
        match req.verb:
            case "envelope":
                env = self._load(int(req.args[0], 16))
                if env is None:
                    return ["smtpctl: no such envelope"], 1
                # COMPAT.md: `show envelope` prints 6.8's key: value format
                return render_upstream(env).splitlines(), 0
            case "discover":
                # smtpctl discover: (re)load a message's envelopes into the scheduler
                # (e.g. copied in by hand); the scheduler ignores those it knows
                oid = int(req.args[0], 16)
                msgid = oid >> 32 if oid > 0xFFFFFFFF else oid
                evpids = [oid] if oid > 0xFFFFFFFF else self.front.message_envelopes(msgid)
                envs = [e for e in (self._load(x) for x in evpids) if e is not None]
                if envs:
                    self._send_schedule({msgid: [scheduler_info(e) for e in envs]})
                n = len(envs)
                return [f"{n} envelope{'s' if n > 1 else ''} discovered"], 0
            case "uncorrupt":
                msgid = int(req.args[0], 16)
                try:
                    envs = self.front.uncorrupt(msgid)
                except NotFound:
                    return ["smtpctl: no such corrupt message"], 1
                except QueueCorrupt as exc:
                    return [f"smtpctl: still corrupt: {exc}"], 1
                self._send_schedule({msgid: [scheduler_info(e) for e in envs]})
                return ["command succeeded"], 0
            case "message":
                oid = int(req.args[0], 16)
                msgid = oid >> 32 if oid > 0xFFFFFFFF else oid
                try:
                    with self.front.message_open(msgid) as src:
                        return src.read().decode("utf-8", "replace").splitlines(), 0
                except NotFound:
                    return ["smtpctl: no such message"], 1
        return [f"smtpctl: unknown queue request {req.verb}"], 1

    def _queue_line(self, env: Envelope) -> str:
        # runstate and N are the scheduler's: control merges them in
        state = "inflight|-1" if env.evpid in self.inflight else "pending|-1"
        return queue_line(env, state)


def _status_of(text: str, kind: DsnKind) -> str:
    parts = text.split()
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    if kind is DsnKind.DELAYED:
        return "4.0.0"
    return "5.0.0"

