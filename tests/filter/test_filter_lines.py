"""The smtpd-filters(7) line protocol: what we write, what we accept."""

from __future__ import annotations

import pytest

from smtpd.filter import lines as L


def test_config_handshake_lines() -> None:
    assert L.config_lines(300, "mx.test") == [
        "config|smtpd-version|7.6.0", "config|protocol|0.7", "config|smtp-session-timeout|300",
        "config|admd|mx.test", "config|subsystem|smtp-in", "config|ready"]
    assert "config|admd" not in "".join(L.config_lines(300, None))


def test_report_and_filter_lines() -> None:
    sid = 0x7641DF9771B4ED00
    assert L.report_line("link-connect", sid, ("mail.openbsd.org", "pass", "1.2.3.4:33174",
                                                "5.6.7.8:25"), now=1576146008.006099) == (
        "report|0.7|1576146008.006099|smtp-in|link-connect|7641df9771b4ed00|"
        "mail.openbsd.org|pass|1.2.3.4:33174|5.6.7.8:25")
    assert L.report_line("link-disconnect", sid, now=1.5) == (
        "report|0.7|1.500000|smtp-in|link-disconnect|7641df9771b4ed00")
    # a request always has its parameter field, empty for commit/data
    assert L.filter_line("commit", sid, 0x1EF1C203CC576E5D, now=2.0) == (
        "filter|0.7|2.000000|smtp-in|commit|7641df9771b4ed00|1ef1c203cc576e5d|")
    assert L.filter_line("data-line", 1, 2, ("a|b",), now=2.0).endswith(
        "|0000000000000001|0000000000000002|a|b")


def test_fields_never_carry_line_breaks() -> None:
    line = L.report_line("protocol-client", 1, ("HELO x\r\nregister|ready",))
    assert "\n" not in line and "\r" not in line


@pytest.mark.parametrize(("text", "expected"), [
    ("register|ready", L.Ready()),
    ("register|filter|smtp-in|mail-from", L.Register("filter", "smtp-in", "mail-from")),
    ("register|report|smtp-in|tx-begin", L.Register("report", "smtp-in", "tx-begin")),
    ("filter-result|00000000000000aa|00000000000000bb|proceed",
     L.Result(0xAA, 0xBB, L.Decision.PROCEED)),
    ("filter-result|aa|bb|reject|550 5.7.1 no | way",
     L.Result(0xAA, 0xBB, L.Decision.REJECT, "550 5.7.1 no | way")),
    ("filter-dataline|aa|bb|Subject: x|y", L.DataLine(0xAA, 0xBB, "Subject: x|y")),
    ("filter-dataline|aa|bb|", L.DataLine(0xAA, 0xBB, "")),
])
def test_parse_valid(text: str, expected: L.Message) -> None:
    assert L.parse(text) == expected


@pytest.mark.parametrize("text", [
    "", "hello", "register|filter|smtp-in|no-such-phase", "register|report|smtp-in",
    "register|bogus|smtp-in|connect", "filter-result|zz|bb|proceed",
    "filter-result|aa|bb|maybe", "filter-result|aa|bb|reject", "filter-result|aa|bb|bypass",
    "filter-result|aa", "filter-dataline|aa|bb", "filter-result|-1|bb|proceed",
    "filter-result|1" + "0" * 17 + "|bb|proceed",
])
def test_parse_invalid(text: str) -> None:
    with pytest.raises(L.LineError):
        L.parse(text)


@pytest.mark.parametrize(("text", "ok"), [
    ("550 no", True), ("421", True), ("451 4.3.0 later", True), ("250 ok", False),
    ("55 x", False), ("550-x", False), ("abc", False), ("550 a\x00b", False)])
def test_reply_ok(text: str, ok: bool) -> None:
    assert L.reply_ok(text) is ok
