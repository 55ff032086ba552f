"""Corpus: tests/data/conf/valid must be accepted, tests/data/conf/invalid
refused with exactly the messages on their ``# expect:`` lines.

Every file goes through both runners: run_smtpd_n() calls check_command()
in-process (fast, exact), run_smtpd_cli() runs the real ``smtpd -n -f NAME``
(what an administrator sees, exit codes included).
Files are named relative to their directory (the messages say
``name.conf:LINE: ...``); ``{dir}`` in an expectation stands for that
directory.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpd.config import check_command, dump, load_config

CORPUS = Path(__file__).resolve().parent.parent / "data" / "conf"
VALID = sorted((CORPUS / "valid").glob("*.conf"))
INVALID = sorted((CORPUS / "invalid").glob("*.conf"))


def run_smtpd_n(conf: Path, verbose: bool = False) -> tuple[int, str, str]:
    """``smtpd -n [-v] -f NAME`` run in the file's directory: (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(conf.parent):
        rc = check_command(conf.name, {}, verbose, stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


SMTPD = Path(sys.executable).parent / "smtpd"


def run_smtpd_cli(conf: Path, verbose: bool = False) -> tuple[int, str, str]:
    """The real command: ``smtpd -n [-v] -f NAME`` in the file's directory."""
    if not SMTPD.exists():
        pytest.skip(f"{SMTPD} is not installed")
    argv = [str(SMTPD), "-n", *(["-v"] if verbose else []), "-f", conf.name]
    done = subprocess.run(argv, cwd=conf.parent, capture_output=True, text=True, timeout=60,
                          check=False)
    return done.returncode, done.stdout, done.stderr


Runner = Callable[[Path, bool], tuple[int, str, str]]
RUNNERS = pytest.mark.parametrize("run", [run_smtpd_n, run_smtpd_cli], ids=["api", "cli"])


def expectations(conf: Path) -> list[str]:
    lines = []
    for line in conf.read_text().splitlines():
        if not line.startswith("# expect: "):
            break
        lines.append(line.removeprefix("# expect: ").replace("{dir}", str(conf.parent)))
    return lines


def test_corpus_is_there() -> None:
    assert len(VALID) >= 5 and len(INVALID) >= 40


@RUNNERS
@pytest.mark.parametrize("conf", VALID, ids=lambda p: p.name)
def test_valid(conf: Path, run: Runner) -> None:
    assert run(conf, False) == (0, "", "configuration OK\n")


@pytest.mark.parametrize("conf", VALID, ids=lambda p: p.name)
def test_valid_dump_is_reparseable(conf: Path, tmp_path: Path) -> None:
    rc, out, err = run_smtpd_n(conf, verbose=True)
    assert rc == 0 and err == "configuration OK\n" and "\nmatch " in out
    # the unredacted dump parses back to the same dump
    with contextlib.chdir(conf.parent):
        first = dump(load_config(conf.name))
    again = tmp_path / "dumped.conf"
    again.write_text(first)
    second = dump(load_config(str(again)))
    assert second.split("\n", 1)[1] == first.split("\n", 1)[1]  # line 1 names the file


@RUNNERS
@pytest.mark.parametrize("conf", INVALID, ids=lambda p: p.name)
def test_invalid(conf: Path, run: Runner) -> None:
    expected = expectations(conf)
    assert expected, f"{conf.name}: no '# expect:' line"
    rc, out, err = run(conf, False)
    assert (rc, out) == (1, "")
    assert err.splitlines() == expected
    assert "Traceback" not in err
