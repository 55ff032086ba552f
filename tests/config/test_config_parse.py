"""Parser: directives, defaults, macros, includes, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from smtpd.config import (
    ActionKind,
    AuthMode,
    CondKind,
    ConfigError,
    ListenerKind,
    RelayProto,
    RelayTls,
    TlsMode,
    dump,
    load_config,
)
from smtpd.config.model import Config


def parse(tmp_path: Path, text: str, **kw: object) -> Config:
    f = tmp_path / "smtpd.conf"
    f.write_text(text)
    return load_config(str(f), base_dir=str(tmp_path), hostname="mx.test", **kw)  # type: ignore[arg-type]


def errors(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "smtpd.conf"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(f), base_dir=str(tmp_path), hostname="mx.test")
    prefix = str(f) + ":"
    return [e.replace(prefix, "L") for e in info.value.errors]


MINIMAL = 'action "l" mbox\nmatch for local action "l"\n'


def test_defaults(tmp_path: Path) -> None:
    c = parse(tmp_path, MINIMAL)
    assert c.queue_path == "/var/spool/smtpd"
    assert c.control_socket == "/var/run/smtpd.sock"
    assert c.queue.ttl == 4 * 86400
    assert c.bounce_warn_intervals == (4 * 3600,)
    assert c.smtp.max_message_size == 36700160
    assert (c.smtp.max_mails, c.smtp.max_rcpt, c.smtp.sub_addr_delim) == (100, 1000, "+")
    assert c.hostname == "mx.test"
    # upstream always has the local enqueuer's socket listener
    assert [lst.kind for lst in c.listeners] == [ListenerKind.SOCKET]
    rule = c.rules[0]
    assert [cond.kind for cond in rule.conditions] == [CondKind.FROM_LOCAL, CondKind.FOR_LOCAL]
    assert rule.source.endswith("smtpd.conf:2")


def test_paths_relative_to_base_dir(tmp_path: Path) -> None:
    c = parse(tmp_path, 'queue path "var/spool"\ncontrol socket var/s.sock\n'
              'table a "file:etc/aliases"\naction m maildir "var/mail/%{user.username}"\n'
              'action h maildir "~/Mail"\naction p maildir "%{user.directory}/M"\n'
              'match for any action m\n')
    assert c.queue_path == str(tmp_path / "var/spool")
    assert c.control_socket == str(tmp_path / "var/s.sock")
    assert c.tables["a"].config == str(tmp_path / "etc/aliases")
    assert c.actions["m"].maildir_path == str(tmp_path / "var/mail/%{user.username}")
    assert c.actions["h"].maildir_path == "~/Mail"
    assert c.actions["p"].maildir_path == "%{user.directory}/M"


def test_queue_smtp_bounce(tmp_path: Path) -> None:
    c = parse(tmp_path, MINIMAL + 'queue compress\nqueue encrypt "k1"\nqueue ttl 2d\n'
              "smtp max-message-size 10M\nsmtp limit max-mails 5 max-rcpt 7\n"
              "smtp sub-addr-delim -\nbounce warn-interval 1h, 30m\n")
    assert c.queue.compression and c.queue.encryption and c.queue.encryption_key == "k1"
    assert c.queue.ttl == 2 * 86400
    assert c.smtp.max_message_size == 10 * 1024 * 1024
    assert (c.smtp.max_mails, c.smtp.max_rcpt, c.smtp.sub_addr_delim) == (5, 7, "-")
    assert c.bounce_warn_intervals == (1800, 3600)
    c = parse(tmp_path, MINIMAL + "queue compression\nqueue encryption stdin\n")
    assert c.queue.encryption_key == "stdin"
    c = parse(tmp_path, MINIMAL + "queue encryption\n")
    assert c.queue.encryption and c.queue.encryption_key is None


def test_macros_and_cmdline_override(tmp_path: Path) -> None:
    text = 'addr = "10.1.2.3"\nlisten on $addr port 2525\n' + MINIMAL
    assert parse(tmp_path, text).listeners[0].interface == "10.1.2.3"
    c = parse(tmp_path, text, macros={"addr": "127.0.0.2"})
    assert c.listeners[0].interface == "127.0.0.2"
    assert errors(tmp_path, "listen on $nope\n" + MINIMAL) == ["L1: macro 'nope' not defined"]


def test_continuation_comments_quotes(tmp_path: Path) -> None:
    c = parse(tmp_path, '# comment \\\n still comment\naction "l" \\\n  mda "/bin/x \\"y\\" z"'
              " # trailing\nmatch for local \\\naction l\n")
    assert c.actions["l"].mda_command == '/bin/x "y" z'
    assert c.actions["l"].source.endswith(":3")
    assert c.rules[0].source.endswith(":5")


def test_include(tmp_path: Path) -> None:
    (tmp_path / "inc.conf").write_text('action "l" mbox\n')
    c = parse(tmp_path, 'include "inc.conf"\nmatch for local action l\n')
    assert c.actions["l"].source == f"{tmp_path / 'inc.conf'}:1"
    errs = errors(tmp_path, 'include "missing.conf"\n' + MINIMAL)
    assert errs == ["L1: failed to include file missing.conf: No such file or directory"]


def test_include_loop(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text('include "b.conf"\n')
    (tmp_path / "b.conf").write_text('include "a.conf"\n')
    errs = errors(tmp_path, 'include "a.conf"\n' + MINIMAL)
    assert len(errs) == 1 and "include loop" in errs[0]


def test_listen_options(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    c = parse(tmp_path, "pki mx.test cert c.crt\npki mx.test key c.key\ntable creds { u = h }\n"
              "listen on 127.0.0.1 port 587 tls-require pki mx.test auth <creds> tag SUB "
              "hostname sub.test mask-src no-dsn senders <creds> masquerade\n"
              "listen on ::1 inet6 smtps pki mx.test auth-optional\n"
              "listen on socket tag LOCAL\n" + MINIMAL)
    a, b, s = c.listeners
    assert (a.port, a.tls, a.auth, a.auth_table, a.tag) == (587, TlsMode.TLS_REQUIRE,
                                                             AuthMode.REQUIRED, "creds", "SUB")
    assert a.hostname == "sub.test" and c.listener_hostname(a) == "sub.test"
    assert a.mask_src and a.no_dsn and a.masquerade and a.senders_table == "creds"
    assert (b.port, b.tls, b.auth, b.auth_table) == (465, TlsMode.SMTPS, AuthMode.OPTIONAL, None)
    assert c.listener_hostname(b) == "mx.test"
    assert s.kind is ListenerKind.SOCKET and s.tag == "LOCAL"
    assert c.pkis["mx.test"].cert == str(tmp_path / "c.crt")


def test_actions(tmp_path: Path) -> None:
    c = parse(tmp_path, "table a { root = bob }\ntable s { bob = bob:pw }\n"
              'mda wrapper w "/usr/bin/wrap %{mda}"\n'
              "action m maildir junk alias <a> user vmail wrapper w ttl 1h\n"
              'action d mda "/usr/bin/deliver -f %{sender}" virtual <a>\n'
              'action l lmtp "/run/lmtp.sock" rcpt-to\naction l2 lmtp 127.0.0.1:24\n'
              "action f forward-only\naction e expand-only\n"
              "action r relay host smtps://bob@mail.example.net auth <s> tls no-verify "
              "helo me.test src { 10.0.0.1 }\n" + 'match for any action m\n')
    m = c.actions["m"]
    assert (m.kind, m.maildir_path, m.junk, m.alias_table, m.user, m.wrapper, m.ttl) == (
        ActionKind.MAILDIR, None, True, "a", "vmail", "w", 3600)
    assert c.mda_wrappers["w"] == "/usr/bin/wrap %{mda}"
    assert c.actions["d"].mda_command == "/usr/bin/deliver -f %{sender}"
    assert c.actions["l"].lmtp_destination == "/run/lmtp.sock" and c.actions["l"].lmtp_rcpt_to
    assert c.actions["l2"].lmtp_destination == "127.0.0.1:24"
    assert c.actions["f"].kind is ActionKind.FORWARD_ONLY
    assert c.actions["e"].kind is ActionKind.EXPAND_ONLY


def test_relay(tmp_path: Path) -> None:
    c = parse(tmp_path, "table s { bob = u:p }\n"
              "action r relay host smtps://bob@mail.example.net auth <s> tls no-verify "
              "helo me.test src 10.0.0.1\naction r2 relay backup mx mx1.test\n"
              "action r3 relay host lmtp://[::1]:24\nmatch for any action r\n")
    r = c.actions["r"].relay
    assert r is not None and r.host is not None
    assert (r.host.proto, r.host.label, r.host.host, r.host.port) == (
        RelayProto.SMTPS, "bob", "mail.example.net", 465)
    assert r.tls is RelayTls.REQUIRE_NO_VERIFY and r.auth_table == "s" and r.helo == "me.test"
    assert r.src_table is not None and c.tables[r.src_table].entries == (("10.0.0.1", None),)
    r2 = c.actions["r2"].relay
    assert r2 is not None and r2.backup and r2.backup_mx == "mx1.test"
    r3 = c.actions["r3"].relay
    assert r3 is not None and r3.host is not None and (r3.host.host, r3.host.port) == ("::1", 24)


def test_match_conditions(tmp_path: Path) -> None:
    c = parse(tmp_path, "table d { a.test, b.test }\naction l mbox\n"
              "match !from src { 10.0.0.0/8 } mail-from regex \"^x@\" for domain <d> "
              "! tls helo h.test tag T action l\n"
              "match from auth for any reject\nmatch from auth <d> for rcpt-to x@y action l\n"
              "match auth rcpt-to <d> from rdns action l\n")
    r0 = c.rules[0]
    kinds = [(x.kind, x.negate, x.regex) for x in r0.conditions]
    assert kinds == [(CondKind.FROM_SRC, True, False), (CondKind.MAIL_FROM, False, True),
                     (CondKind.FOR_DOMAIN, False, False), (CondKind.TLS, True, False),
                     (CondKind.HELO, False, False), (CondKind.TAG, False, False)]
    assert r0.conditions[2].table == "d" and r0.action == "l" and not r0.reject
    assert c.rules[1].reject and c.rules[1].conditions[0].table is None
    assert c.rules[2].conditions[0].table == "d"
    # the implicit "for local" goes right after the from condition
    assert [x.kind for x in c.rules[3].conditions] == [
        CondKind.AUTH, CondKind.RCPT_TO, CondKind.FROM_RDNS, CondKind.FOR_LOCAL]


@pytest.mark.parametrize(("text", "message"), [
    ("lisen on lo0\n", 'L3: syntax error: unknown directive "lisen", did you mean "listen"?'),
    ("listen on lo0 prot 25\n", 'L3: syntax error: unexpected "prot", did you mean "port"?'),
    ("listen on lo0 tls\n", "L3: invalid listen option: pki required for tls/smtps"),
    ("listen on lo0 auth\n", "L3: invalid listen option: auth requires tls/smtps"),
    ("listen on lo0\nlisten on lo0\n", "L4: listener on lo0 port 25 already defined at L3"),
    ("action m maildir alias <nope>\n", "L3: no such table: nope"),
    ("match from any from local action l\n", "L3: from already specified for this rule"),
    ("match auth from auth action l\n", "L3: auth already specified for this rule"),
    ("match for any action ll\n", 'L3: no such dispatcher: ll, did you mean "l"?'),
    ("match for any\n", 'L3: syntax error: match needs "action NAME" or "reject"'),
    ("queue ttl 4x\n", 'L3: invalid ttl delay: "4x" (a number and s, m, h or d)'),
    ("smtp max-message-size lots\n", "L3: invalid size: lots"),
    ("smtp sub-addr-delim @\n", "L3: sub-addr-delim uses invalid character"),
    ("listen on lo0 port 99999\n", "L3: invalid port: 99999"),
    ('x = "open\n', "L3: reached end of file while parsing quoted string"),
    ("action r relay auth { a = b }\n",
     "L3: auth may not be specified without host on a dispatcher"),
    ("action r relay host h.test backup\n", "L3: backup and host are mutually exclusive"),
    ("action l mbox\n", 'L3: dispatcher already declared with that name: l (at L1)'),
    ("pki p dhe auto\n", "L3: pki p: no certificate file"),
    ("pki p dhe strong\n", "L3: invalid DHE keyword: strong"),
    ("table t { a, b = c }\n", "L3: syntax error: table mixes list values and key = value pairs"),
    ("action r relay host smtp+notls://h tls\n",
     "L3: relay tls may not be used with smtp+notls://"),
    ("action r relay host lmtp://h\n", "L3: invalid relay url: lmtp://h"),
])
def test_errors(tmp_path: Path, text: str, message: str) -> None:
    assert errors(tmp_path, MINIMAL + text)[0] == message


def test_no_rules(tmp_path: Path) -> None:
    assert errors(tmp_path, "listen on lo0\n") == ["warn: no rules, nothing to do"]


def test_several_errors_at_once(tmp_path: Path) -> None:
    errs = errors(tmp_path, "lisen on lo0\nqueue ttl x\n" + MINIMAL + "match for any action z\n")
    assert [e.split(":")[0] for e in errs] == ["L1", "L2", "L5"]


def test_dump_reparses_to_same_dump(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    text = ("pki mx.test cert c.crt\npki mx.test key c.key\ntable creds { u = h }\n"
            "table al file:/etc/mail/aliases\n"
            "listen on 127.0.0.1 port 587 tls-require verify pki mx.test auth <creds> tag S\n"
            "listen on socket mask-src\nqueue compression\n"
            'action m maildir "~/M" junk alias <al>\naction r relay host smtp+tls://a@h:2525 '
            "auth <creds> helo x\n"
            "match !from src { 10.0.0.0/8, 10.1.0.0/16 } for domain x.test action m\n"
            'match from auth for any tag "T" action r\nmatch for any reject\n')
    c = parse(tmp_path, text)
    first = dump(c)
    c2 = parse(tmp_path, first)
    assert dump(c2) == first
    assert [r.conditions for r in c2.rules] == [r.conditions for r in c.rules]
    assert [replace(a, source="") for a in c2.actions.values()] == [
        replace(a, source="") for a in c.actions.values()]
    assert [replace(x, source="") for x in c2.listeners] == [
        replace(x, source="") for x in c.listeners]


def test_unused_macros_reported_with_verbose(tmp_path: Path) -> None:
    import io

    from smtpd.config import check_command

    f = tmp_path / "smtpd.conf"
    f.write_text('used = "l"\nspare = "x"\naction $used mbox\nmatch for local action l\n')
    out, err = io.StringIO(), io.StringIO()
    assert check_command(str(f), {}, True, stdout=out, stderr=err) == 0
    assert err.getvalue() == "warning: macro 'spare' not used\nconfiguration OK\n"
    assert 'action "l" mbox' in out.getvalue()
