"""`smtp limit` options against hostile clients (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from test_config_parse import MINIMAL, errors, parse


def test_defaults(tmp_path: Path) -> None:
    s = parse(tmp_path, MINIMAL).smtp
    assert (s.max_sessions_per_ip, s.command_timeout, s.data_timeout) == (0, 120, 1800)
    assert (s.max_auth_failures, s.auth_ban, s.auth_failure_delay) == (5, 900, 1)


def test_all_options_on_one_line_with_upstream_ones(tmp_path: Path) -> None:
    s = parse(tmp_path, MINIMAL + "smtp limit max-rcpt 7 max-sessions-per-ip 20 "
              "command-timeout 30s data-timeout 10m max-auth-failures 3 auth-ban 1h "
              "auth-failure-delay 0 max-mails 4\n").smtp
    assert (s.max_rcpt, s.max_mails, s.max_sessions_per_ip) == (7, 4, 20)
    assert (s.command_timeout, s.data_timeout) == (30, 600)
    assert (s.max_auth_failures, s.auth_ban, s.auth_failure_delay) == (3, 3600, 0)


def test_bad_values_are_file_line_errors(tmp_path: Path) -> None:
    for text, want in [
        ("smtp limit max-auth-failures 0", "invalid smtp limit max-auth-failures: 0"),
        ("smtp limit command-timeout 0s", "invalid smtp limit command-timeout"),
        ("smtp limit command-timeout 10", "invalid smtp limit command-timeout"),
        ("smtp limit max-sessions-per-ip -1", "invalid smtp limit max-sessions-per-ip"),
        ("smtp limit auth-ban", "auth-ban"),
        ("smtp limit max-session-per-ip 3", "max-session-per-ip"),
    ]:
        got = errors(tmp_path, MINIMAL + text + "\n")
        assert len(got) == 1 and got[0].startswith("L3:"), (text, got)
        assert want in got[0], (text, got)
