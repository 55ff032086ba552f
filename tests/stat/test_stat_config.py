"""The `stats ...` directives (docs/observability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpd.config import ConfigError, dump, load_config
from smtpd.config.model import Config

MINIMAL = 'action "l" mbox\nmatch for local action "l"\n'


def parse(tmp_path: Path, text: str) -> Config:
    f = tmp_path / "smtpd.conf"
    f.write_text(text + MINIMAL)
    return load_config(str(f), base_dir=str(tmp_path), hostname="mx.test")


def test_stats_directives(tmp_path: Path) -> None:
    c = parse(tmp_path, "")
    assert (c.stats_path, c.stats_interval, c.stats_keep, c.stats_prometheus) == (
        None, 1, 365 * 86400, None)
    c = parse(tmp_path, 'stats persistent "s.db" interval 10 keep 90d\n'
                        "stats prometheus on ::1 port 9100\n")
    assert c.stats_path == str(tmp_path / "s.db")
    assert (c.stats_interval, c.stats_keep, c.stats_prometheus) == (10, 90 * 86400,
                                                                    ("::1", 9100))
    assert parse(tmp_path, "stats prometheus port 9100\n").stats_prometheus == (
        "127.0.0.1", 9100)
    text = dump(c)
    assert f'stats persistent "{tmp_path}/s.db" interval 10 keep 7776000s' in text
    assert "stats prometheus on ::1 port 9100" in text
    # what dump prints parses back to the same settings
    again = parse(tmp_path, "\n".join(line for line in text.splitlines()
                                      if line.startswith("stats")) + "\n")
    assert (again.stats_path, again.stats_keep, again.stats_prometheus) == (
        c.stats_path, c.stats_keep, c.stats_prometheus)


@pytest.mark.parametrize("text", [
    'stats persistent "s.db" interval 0\n',
    'stats persistent "s.db" keep 1d\n',
    'stats persistent "s.db" every 5\n',
    "stats prometheus port 0\n",
    "stats prometheus on 127.0.0.1\n",
    "stats ramstat\n",
])
def test_stats_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text)
    assert info.value.errors[0].startswith(str(tmp_path / "smtpd.conf") + ":1:")
