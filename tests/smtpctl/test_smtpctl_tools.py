"""smtpctl encrypt, makemap and the bash completion, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from smtpctl.encrypt import EncryptError, encrypt
from smtpctl.grammar import GRAMMAR, Arg

COMPLETION = Path(__file__).resolve().parents[2] / "contrib" / "smtpctl.bash-completion"


def run(*args: str, data: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], input=data, capture_output=True,
                          text=True, timeout=30)


def test_encrypt_argument_and_stdin_give_bcrypt_hashes() -> None:
    out = run("smtpctl", "encrypt", "s3cret pass")
    assert out.returncode == 0, out.stderr
    hashed = out.stdout.strip()
    assert hashed.startswith("$2b$")
    assert bcrypt.checkpw(b"s3cret pass", hashed.encode())
    assert not bcrypt.checkpw(b"other", hashed.encode())
    many = run("smtpctl", "encrypt", data="one\ntwo\n")
    assert many.returncode == 0, many.stderr
    first, second = many.stdout.split()
    assert bcrypt.checkpw(b"one", first.encode()) and bcrypt.checkpw(b"two", second.encode())


def test_encrypt_refuses_what_bcrypt_would_truncate() -> None:
    with pytest.raises(EncryptError):
        encrypt("x" * 73, rounds=4)
    assert bcrypt.checkpw(b"x" * 72, encrypt("x" * 72, rounds=4).encode())


def test_makemap_checks_dumps_and_normalizes(tmp_path: Path) -> None:
    src = tmp_path / "aliases"
    src.write_text("# comment\nroot:   bob, alice\n\nabuse root\n")
    out = run("smtpctl.makemap", "-U", "-t", "aliases", str(src))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "root\tbob, alice\nabuse\troot\n"
    dest = tmp_path / "aliases.norm"
    out = run("smtpctl.makemap", "-d", "hash", "-o", str(dest), str(src))
    assert (out.returncode, out.stdout) == (0, "")
    assert dest.read_text() == "root\tbob, alice\nabuse\troot\n"
    src.write_text("root: bob\nbroken\n")
    bad = run("smtpctl.makemap", str(src))
    assert bad.returncode == 1 and f"{src}:2: invalid map entry" in bad.stderr
    assert run("smtpctl.makemap", "-t", "db", str(src)).returncode == 1
    assert run("smtpctl.makemap", str(tmp_path / "missing")).returncode == 1


def complete(line: str) -> set[str]:
    script = (f"source {COMPLETION}\n"
              f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
              "_smtpctl; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin", "SMTPCTL_CONFIG": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_completion_offers_every_command_of_the_grammar() -> None:
    specs = [s for s in GRAMMAR if not s.hidden]
    firsts = {s.words[0] for s in specs}
    assert complete("smtpctl ''") == {"-s", *map(str, firsts)}
    assert complete("smtpctl -s /x/sock ''") == {"-s", *map(str, firsts)}
    for first in firsts:
        seconds = {w.words[1] for w in specs if w.words[0] == first and len(w.words) > 1}
        words = {w for w in seconds if isinstance(w, str)}
        if Arg.PAUSABLE in seconds:
            words |= {"mda", "mta", "smtp"}
        if words:
            assert words <= complete(f"smtpctl {first} ''"), first
    assert complete("smtpctl show q") == {"queue"}
    assert "scheduler" in complete("smtpctl trace ''")
