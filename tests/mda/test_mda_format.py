from __future__ import annotations

import pytest

from smtpd.mda.format import (
    FormatContext,
    FormatError,
    expand_format,
    expand_path,
    parse_template,
)

CTX = FormatContext(
    sender="Gilles+Hackers@Poolp.org",
    rcpt="Eric+tag@OpenBSD.org",
    dest="eric@openbsd.org",
    username="eric",
    directory="/home/eric",
)


@pytest.mark.parametrize(
    ("fmt", "want"),
    [
        ("%{sender}", "Gilles+Hackers@Poolp.org"),
        ("%{sender.user}", "Gilles+Hackers"),
        ("%{sender.domain}", "Poolp.org"),
        ("%{rcpt}", "Eric+tag@OpenBSD.org"),
        ("%{rcpt.user}", "Eric+tag"),
        ("%{rcpt.domain}", "OpenBSD.org"),
        ("%{dest}", "eric@openbsd.org"),
        ("%{dest.user}", "eric"),
        ("%{user.username}", "eric"),
        ("%{user.directory}", "/home/eric"),
        ("%{RCPT.USER}", "Eric+tag"),
        ("%{rcpt.user:lowercase}", "eric+tag"),
        ("%{rcpt.domain:uppercase}", "OPENBSD.ORG"),
        ("%{sender:strip}", "Gilles@Poolp.org"),
        ("%{sender.user:strip|lowercase}", "gilles"),
        ("%{rcpt.user[0]}", "E"),
        ("%{rcpt.user[1:3]}", "ric"),
        ("%{rcpt.user[2:]}", "ic+tag"),
        ("%{rcpt.user[:1]}", "Er"),
        ("%{rcpt.user[-3:]}", "tag"),
        ("%{rcpt.domain[0]:lowercase}", "o"),
        ("~/Maildir/%{rcpt.user:strip}", "/home/eric/Maildir/Eric"),
        ("100%% %{dest.user}", "100% eric"),
        ("a~/b", "a~/b"),
        ("%{mbox.from}", "Gilles+Hackers@Poolp.org"),
    ],
)
def test_expand(fmt: str, want: str) -> None:
    assert expand_format(fmt, CTX) == want


def test_null_sender() -> None:
    ctx = FormatContext("", "a@b", "a@b", "a", "/h")
    assert expand_format("[%{sender}][%{sender.user}]", ctx) == "[][]"
    assert expand_format("%{mbox.from}", ctx) == "MAILER-DAEMON"


@pytest.mark.parametrize(
    "fmt",
    [
        "%{nope}",
        "%{rcpt",
        "%{rcpt:bogus}",
        "%{rcpt.user[9]}",
        "%{rcpt.user[x]}",
        "%{rcpt.user[]}",
        "%{rcpt.user[3:1]}",
        "%{mda}",
        "%{" + "x" * 200 + "}",
    ],
)
def test_errors(fmt: str) -> None:
    with pytest.raises(FormatError):
        expand_format(fmt, CTX)


def test_escape_dangerous_characters() -> None:
    ctx = FormatContext("a;b|c`d$e/f@x", "r@x", "r@x", "u", "/h")
    assert expand_format("%{sender.user}", ctx) == "a;b:c:d:e:f"
    # raw keeps shell characters but never '/'
    assert expand_format("%{sender.user:raw}", ctx) == "a;b|c`d$e:f"


def test_control_and_dots_refused() -> None:
    for bad in ("..@x", ".@x", "a\nb@x", "a\0b@x"):
        ctx = FormatContext(bad, "r@x", "r@x", "u", "/h")
        with pytest.raises(FormatError):
            expand_format("%{sender.user}", ctx)


def test_expand_path_refuses_formed_dotdot() -> None:
    ctx = FormatContext("s@x", ".x@y", "r@x", "u", "/h")
    with pytest.raises(FormatError):
        expand_path("/var/mail/%{rcpt.user[0]}.", ctx)  # "." + "." -> ".."
    assert expand_path("/var/../mail/%{dest.user}", ctx) == "/var/../mail/r"


def test_parse_template_keeps_literals() -> None:
    parts = parse_template("a %% b %{rcpt:lowercase|strip} c")
    assert parts[0] == "a " and parts[1] == "%" and parts[2] == " b "
    tok = parts[3]
    assert not isinstance(tok, str) and tok.modifiers == ("lowercase", "strip")


def test_slice_cannot_form_dotdot() -> None:
    ctx = FormatContext("s@x", "a..b@y", "r@x", "u", "/h")
    assert expand_format("%{rcpt.user[0:1]}", ctx) == "a."
    with pytest.raises(FormatError):
        expand_format("%{rcpt.user[1:2]}", ctx)


def test_home_required_for_tilde() -> None:
    ctx = FormatContext("s@x", "r@y", "r@x", "u", "")
    with pytest.raises(FormatError):
        expand_path("~/Maildir", ctx)
