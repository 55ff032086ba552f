"""`smtpctl show queue` lines, as smtpctl.c show_queue_envelope() prints them:

    evpid|family|type|flags|sender|rcpt|dest|ctime|expire|lasttry|retry|runstate|N|errorline

The daemon fills runstate and N from the scheduler ("pending|<nexttry-now>",
"inflight|<now-since>"); mailq reading a stopped daemon's spool prints "offline|".
"""

from __future__ import annotations

from smtpd.queue.envelope import Envelope, EnvelopeFlag

# getflag() order and names in smtpctl.c: bounce, auth, internal
FLAG_WORDS = ((EnvelopeFlag.BOUNCE, "bounce"), (EnvelopeFlag.AUTHENTICATED, "auth"),
              (EnvelopeFlag.INTERNAL, "internal"))


def queue_line(env: Envelope, runstate: str) -> str:
    family = "local" if env.sockaddr == "local" else (
        "inet6" if env.sockaddr.startswith("[") else "inet4")
    flags = ",".join(word for flag, word in FLAG_WORDS if flag in env.flags)
    return "|".join([
        f"{env.evpid:016x}", family, env.type.value, flags, env.sender, env.rcpt, env.dest,
        str(env.ctime), str(env.expire), str(env.lasttry), str(env.retry), runstate,
        env.errorline])
