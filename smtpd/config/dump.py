"""dump(): the canonical text of a Config (``smtpd -v -n``), re-parseable.

Every setting is written out, defaults included, in a fixed order; names and
values are always quoted so that no value can be taken for a keyword.
"""

from __future__ import annotations

from smtpd.config import model

C = model.CondKind
REDACTED = "********"


def q(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


def delay(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _entries(t: model.TableDef) -> str:
    if t.kind is model.TableEntryKind.LIST:
        return "{ " + ", ".join(q(k) for k, _ in t.entries) + " }"
    return "{ " + ", ".join(f"{q(k)} = {q(v or '')}" for k, v in t.entries) + " }"


def table_ref(config: model.Config, name: str) -> str:
    t = config.tables.get(name)
    if t is None or not t.inline:
        return f"<{name}>"
    if t.kind is model.TableEntryKind.LIST and len(t.entries) == 1:
        return q(t.entries[0][0])
    return _entries(t)


def _table(t: model.TableDef) -> str:
    if t.backend == "static" and t.config is None:
        return f"table {q(t.name)} {_entries(t)}"
    spec = f"{t.backend}:{t.config}" if t.config else t.backend
    return f"table {q(t.name)} {q(spec)}"


def _listener(config: model.Config, lst: model.Listener) -> str:
    out = ["listen on", "socket" if lst.kind is model.ListenerKind.SOCKET else q(lst.interface)]
    if lst.family is not model.Family.ANY:
        out.append(lst.family.value)
    if lst.port_explicit:
        out.append(f"port {lst.port}")
    if lst.tls is not model.TlsMode.NONE:
        out.append(lst.tls.value + (" verify" if lst.tls_verify else ""))
    out += [f"pki {q(p)}" for p in lst.pkis]
    if lst.ca:
        out.append(f"ca {q(lst.ca)}")
    if lst.auth is not model.AuthMode.NONE:
        out.append(lst.auth.value)
        if lst.auth_table:
            out.append(table_ref(config, lst.auth_table))
    for key, word in (("tag", "tag"), ("hostname", "hostname"), ("ciphers", "ciphers"),
                      ("protocols", "protocols")):
        value = getattr(lst, key)
        if value is not None:
            out.append(f"{word} {q(value)}")
    if lst.hostnames_table:
        out.append(f"hostnames {table_ref(config, lst.hostnames_table)}")
    if lst.senders_table:
        out.append(f"senders {table_ref(config, lst.senders_table)}")
        if lst.masquerade:
            out.append("masquerade")
    for flag, word in (("mask_src", "mask-src"), ("no_dsn", "no-dsn"),
                       ("received_auth", "received-auth"), ("proxy_v2", "proxy-v2")):
        if getattr(lst, flag):
            out.append(word)
    if lst.filter:
        if lst.filter.startswith("{"):
            names = [n.strip() for n in lst.filter.strip("{}").split(",")]
            out.append("filter { " + ", ".join(q(n) for n in names) + " }")
        else:
            out.append(f"filter {q(lst.filter)}")
    return " ".join(out)


def _action(config: model.Config, a: model.Action) -> str:
    out = [f"action {q(a.name)}", a.kind.value]
    if a.kind is model.ActionKind.MAILDIR:
        if a.maildir_path:
            out.append(q(a.maildir_path))
        if a.junk:
            out.append("junk")
    elif a.kind is model.ActionKind.MDA:
        out.append(q(a.mda_command or ""))
    elif a.kind is model.ActionKind.LMTP:
        out.append(q(a.lmtp_destination or ""))
        if a.lmtp_rcpt_to:
            out.append("rcpt-to")
    for attr, word in (("alias_table", "alias"), ("virtual_table", "virtual"),
                       ("userbase_table", "userbase")):
        name = getattr(a, attr)
        if name:
            out.append(f"{word} {table_ref(config, name)}")
    if a.user:
        out.append(f"user {q(a.user)}")
    if a.wrapper:
        out.append(f"wrapper {q(a.wrapper)}")
    if a.relay is not None:
        out += _relay(config, a.relay)
    if a.ttl is not None:
        out.append(f"ttl {delay(a.ttl)}")
    return " ".join(out)


def _relay(config: model.Config, r: model.RelayOptions) -> list[str]:
    out: list[str] = []
    if r.host is not None:
        out.append(f"host {q(str(r.host))}")
    if r.host_table:
        out.append(f"host <{r.host_table}>")
    if r.domain_table:
        out.append(f"domain {table_ref(config, r.domain_table)}")
    if r.backup:
        out.append("backup" + (f" mx {q(r.backup_mx)}" if r.backup_mx else ""))
    if r.tls is not model.RelayTls.OPPORTUNISTIC:
        out.append(r.tls.value)
    if r.tls_policy is not model.RelayTlsPolicy.NONE:
        out.append(f"tls-policy {r.tls_policy.value}")
    if r.tls_policy_table:
        out.append(f"tls-policy {table_ref(config, r.tls_policy_table)}")
    if r.auth_table:
        out.append(f"auth {table_ref(config, r.auth_table)}")
    for attr, word in (("helo", "helo"), ("pki", "pki"), ("ca", "ca"), ("mail_from", "mail-from"),
                       ("ciphers", "ciphers"), ("protocols", "protocols"), ("filter", "filter")):
        value = getattr(r, attr)
        if value:
            out.append(f"{word} {q(value)}")
    if r.helo_src_table:
        out.append(f"helo-src {table_ref(config, r.helo_src_table)}")
    if r.src_table:
        out.append(f"src {table_ref(config, r.src_table)}")
    if r.srs:
        out.append("srs")
    return out


def _rule(config: model.Config, rule: model.MatchRule) -> str:
    out = ["match"]
    for c in rule.conditions:
        word = ("!" if c.negate else "") + c.kind.value
        if c.regex:
            word += " regex"
        if c.table:
            word += " " + table_ref(config, c.table)
        out.append(word)
    out.append("reject" if rule.reject else f"action {q(rule.action or '')}")
    return " ".join(out)


def dump(config: model.Config, redact: bool = False) -> str:
    """Canonical text of ``config``; redact hides the queue and srs keys."""

    def secret(value: str) -> str:
        return q(REDACTED if redact else value)

    lines = [f"# {config.path}", f"# hostname {config.hostname}"]
    qo = config.queue
    lines.append(f"queue path {q(qo.path)}")
    lines.append(f"control socket {q(config.control_socket)}")
    if config.stats_path is not None:
        lines.append(f"stats persistent {q(config.stats_path)} "
                     f"interval {config.stats_interval} keep {config.stats_keep}s")
    if config.stats_prometheus is not None:
        addr, port = config.stats_prometheus
        lines.append(f"stats prometheus on {addr} port {port}")
    if qo.compression:
        lines.append("queue compression")
    if qo.encryption:
        lines.append("queue encryption" + (f" {secret(qo.encryption_key)}"
                                           if qo.encryption_key else ""))
    lines += [f"queue old-key {secret(k)}" for k in qo.old_keys]
    lines.append(f"queue ttl {delay(qo.ttl)}")
    if qo.backend != "fs":  # the conninfo may hold a password: redacted like keys
        lines.append(f"queue backend {qo.backend}" + (f" {secret(qo.backend_conninfo)}"
                                                      if qo.backend_conninfo else ""))
    if qo.node is not None:
        lines.append(f"queue node {q(qo.node)}")
    if qo.lease != model.QueueOptions.lease:
        lines.append(f"queue lease {delay(qo.lease)}")
    lines.append("bounce warn-interval " + ", ".join(delay(d) for d in
                                                     config.bounce_warn_intervals))
    s = config.smtp
    lines.append(f"smtp max-message-size {s.max_message_size}")
    lines.append(f"smtp limit max-mails {s.max_mails} max-rcpt {s.max_rcpt}")
    for kind, count, window in s.rates:
        lines.append(f"smtp rate {kind} {count} per {delay(window)}")
    lines.append(f"smtp limit max-sessions-per-ip {s.max_sessions_per_ip} "
                 f"command-timeout {delay(s.command_timeout)} data-timeout {delay(s.data_timeout)} "
                 f"max-auth-failures {s.max_auth_failures} auth-ban {delay(s.auth_ban)} "
                 f"auth-failure-delay {s.auth_failure_delay}")
    lines.append(f"smtp sub-addr-delim {q(s.sub_addr_delim)}")
    lines.append(f"smtp ciphers {q(s.ciphers)}")
    lines.append(f"mta max-deferred {config.mta_max_deferred}")
    if config.srs_key:
        lines.append(f"srs key {secret(config.srs_key)}")
    if config.srs_key_backup:
        lines.append(f"srs key backup {secret(config.srs_key_backup)}")
    if config.srs_key or config.srs_key_backup:
        lines.append(f"srs ttl {delay(config.srs_ttl)}")
    if config.admd:
        lines.append(f"admd {q(config.admd)}")
    for name, command in config.mda_wrappers.items():
        lines.append(f"mda wrapper {q(name)} {q(command)}")
    lines.append("")
    for t in config.tables.values():
        if not t.inline:
            lines.append(_table(t))
    for pki in config.pkis.values():
        parts = [f"pki {q(pki.name)}"]
        if pki.cert:
            parts.append(f"cert {q(pki.cert)}")
        if pki.key:
            parts.append(f"key {q(pki.key)}")
        if pki.dhe != "none":
            parts.append(f"dhe {pki.dhe}")
        lines.append(" ".join(parts))
    for ca in config.cas.values():
        lines.append(f"ca {q(ca.name)} cert {q(ca.cert or '')}")
    for proc in config.procs.values():
        parts = [f"proc {q(proc.name)} {q(proc.command)}"]
        parts += [f"{k} {q(v)}" for k, v in (("user", proc.user), ("group", proc.group),
                                               ("chroot", proc.chroot)) if v]
        lines.append(" ".join(parts))
    for f in config.filters.values():
        if f.kind == "chain":
            lines.append(f"filter {q(f.name)} chain {{ " + ", ".join(q(n) for n in f.chain)
                         + " }")
        elif f.kind == "phase":
            lines.append(f"filter {q(f.name)} phase {f.argument}")
        else:
            lines.append(f"filter {q(f.name)} {f.kind} {q(f.argument)}")
    lines.append("")
    for lst in config.listeners:
        if lst.source:  # the implicit socket listener is not written
            lines.append(_listener(config, lst))
    lines.append("")
    for a in config.actions.values():
        lines.append(_action(config, a))
    lines.append("")
    for rule in config.rules:
        lines.append(_rule(config, rule))
    return "\n".join(lines) + "\n"
