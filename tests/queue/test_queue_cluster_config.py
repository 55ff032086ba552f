"""`queue backend postgres "conninfo"`, `queue node`, `queue lease` (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpd.config import ConfigError, dump, load_config
from smtpd.queue.cluster import node_name

RULES = ('listen on 127.0.0.1 port 2525\naction "l" maildir "/tmp/m"\n'
         'match from any for local action "l"\n')


def load(tmp_path: Path, text: str) -> object:
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text + RULES)
    return load_config(str(conf))


def test_directives_parse_and_dump_round_trip(tmp_path: Path) -> None:
    config = load(tmp_path, 'queue backend postgres "host=db dbname=mail password=s3cret"\n'
                            'queue node "mx1"\nqueue lease 1m\n')
    q = config.queue  # type: ignore[attr-defined]
    assert (q.backend, q.backend_conninfo, q.node, q.lease) == (
        "postgres", "host=db dbname=mail password=s3cret", "mx1", 60)
    text = dump(config)  # type: ignore[arg-type]
    again = tmp_path / "again.conf"
    again.write_text(text)
    assert load_config(str(again)).queue == q
    assert "s3cret" not in dump(config, redact=True)  # type: ignore[arg-type]


def test_defaults_fs_and_hostname(tmp_path: Path) -> None:
    q = load(tmp_path, "").queue  # type: ignore[attr-defined]
    assert (q.backend, q.node, q.lease) == ("fs", None, 30)
    assert node_name(q, "mx.example.org") == "mx.example.org"


@pytest.mark.parametrize("line", ['queue backend mysql "x"\n', "queue backend postgres\n",
                                  "queue lease never\n"])
def test_errors_name_the_line(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, line)
    assert any(":1:" in e for e in info.value.errors)
