from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest
from mdatest_util import req_factory

from smtpd.mda import deliver
from smtpd.mda.command import build_invocation, deliver_command, mda_environment
from smtpd.mda.types import DeliveryMethod, DeliveryStatus

MSG = b"Subject: x\n\nbody\n"
PY = sys.executable


def _script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def test_message_on_stdin_with_delivery_headers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    s = _script(tmp_path, "save", f'cat > "{out}"\n')
    req = req_factory(tmp_path)(method=DeliveryMethod.MDA, command=str(s))
    res = deliver(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    assert out.read_bytes() == b"Return-Path: <a@b.test>\nDelivered-To: acc1+tag@acc.test\n" + MSG


def test_argv_expansion_per_element(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    code = "import sys, json; sys.stdin.read(); json.dump(sys.argv[1:], open(sys.argv[1], 'w'))"
    cmd = f"{PY} -c \"{code}\" {out} %{{sender}} 'two words %{{rcpt.user:strip}}' ~/x"
    req = req_factory(tmp_path)(command=cmd, sender="s p@x.test")
    inv = build_invocation(req)
    assert not inv.shell
    assert deliver_command(req, io.BytesIO(MSG)).status is DeliveryStatus.OK
    import json

    assert json.loads(out.read_text()) == [
        str(out),
        "s p@x.test",
        "two words acc1",
        f"{tmp_path}/x",
    ]


def test_environment_as_upstream(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(
        sender="", rcpt="final@d.test", orig_rcpt="orig+ext@o.test", subaddress="ext"
    )
    env = mda_environment(req)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "DOMAIN": "o.test",
        "HOME": str(tmp_path),
        "ORIGINAL_RECIPIENT": "orig+ext@o.test",
        "RECIPIENT": "final@d.test",
        "SHELL": "/bin/sh",
        "LOCAL": "orig+ext",
        "LOGNAME": req.user,
        "USER": req.user,
        "SENDER": "",
        "EXTENSION": "ext",
    }
    out = tmp_path / "env.out"
    s = _script(tmp_path, "env", f'cat >/dev/null; env > "{out}"; pwd >> "{out}"\n')
    res = deliver_command(req_factory(tmp_path)(command=str(s)), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    lines = out.read_text().splitlines()
    assert "RECIPIENT=acc1@acc.test" in lines and "SENDER=a@b.test" in lines
    assert lines[-1] == str(tmp_path)  # runs in the user's home


@pytest.mark.parametrize(
    ("code", "status", "prefix"),
    [
        (0, DeliveryStatus.OK, "250 2.0.0"),
        (75, DeliveryStatus.TEMPFAIL, "451 4.3.0 try later"),
        (1, DeliveryStatus.PERMFAIL, "550 5.3.0 try later"),
        (67, DeliveryStatus.PERMFAIL, "550 5.3.0 try later"),
    ],
)
def test_exit_codes(tmp_path: Path, code: int, status: DeliveryStatus, prefix: str) -> None:
    s = _script(tmp_path, "x", f"cat >/dev/null; echo first; echo 'try later' >&2; exit {code}\n")
    res = deliver_command(req_factory(tmp_path)(command=str(s)), io.BytesIO(MSG))
    assert res.status is status
    assert res.text.startswith(prefix), res.text


def test_exit_without_output(tmp_path: Path) -> None:
    s = _script(tmp_path, "x", "cat >/dev/null; exit 67\n")
    res = deliver_command(req_factory(tmp_path)(command=str(s)), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.PERMFAIL
    assert res.text == "550 5.3.0 mda exited with status 67 (EX_NOUSER)"


def test_signal_is_tempfail(tmp_path: Path) -> None:
    s = _script(tmp_path, "x", "cat >/dev/null; kill -TERM $$\n")
    res = deliver_command(req_factory(tmp_path)(command=str(s)), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "SIGTERM" in res.text


def test_missing_program_is_tempfail(tmp_path: Path) -> None:
    res = deliver_command(req_factory(tmp_path)(command=str(tmp_path / "nope")), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.TEMPFAIL


def test_exit_before_reading_big_message(tmp_path: Path) -> None:
    s = _script(tmp_path, "x", "exit 0\n")
    big = b"Subject: x\n\n" + b"y" * 4_000_000
    res = deliver_command(req_factory(tmp_path)(command=str(s)), io.BytesIO(big))
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "prematurely" in res.text


def test_timeout_kills_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # the grandchild (a background sleep) must die too
    s = _script(tmp_path, "x", f'sleep 30 & echo $! > "{pidfile}"; cat >/dev/null; wait\n')
    req = req_factory(tmp_path)(command=str(s), timeout=1.0)
    t0 = time.monotonic()
    res = deliver_command(req, io.BytesIO(MSG))
    assert time.monotonic() - t0 < 5
    assert res.status is DeliveryStatus.TEMPFAIL
    assert "timed out" in res.text
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("grandchild survived the timeout")


def test_timeout_while_not_reading(tmp_path: Path) -> None:
    s = _script(tmp_path, "x", "exec sleep 30\n")
    req = req_factory(tmp_path)(command=str(s), timeout=0.5)
    res = deliver_command(req, io.BytesIO(b"S: x\n\n" + b"z" * 2_000_000))
    assert res.status is DeliveryStatus.TEMPFAIL


EVIL = [
    "a;touch PWNED;@x.test",
    "$(touch PWNED)@x.test",
    "`touch PWNED`@x.test",
    "a|touch PWNED@x.test",
    "a&&touch PWNED@x.test",
    "x'\";touch PWNED;'@x.test",
]


@pytest.mark.parametrize("sender", EVIL)
@pytest.mark.parametrize("raw", ["", ":raw"])
def test_injection_argv_mode(tmp_path: Path, sender: str, raw: str) -> None:
    out = tmp_path / "arg"
    code = "import sys; sys.stdin.read(); open(sys.argv[1],'w').write(sys.argv[2])"
    cmd = f'{PY} -c "{code}" {out} %{{sender{raw}}}'
    req = req_factory(tmp_path)(command=cmd, sender=sender)
    assert not build_invocation(req).shell
    res = deliver_command(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    assert not (tmp_path / "PWNED").exists()
    if raw:  # one argument, exactly the address
        assert out.read_text() == sender


@pytest.mark.parametrize("sender", EVIL)
@pytest.mark.parametrize("raw", ["", ":raw"])
def test_injection_shell_mode(tmp_path: Path, sender: str, raw: str) -> None:
    out = tmp_path / "arg"
    # the admin's command needs a shell (redirection); envelope data is
    # only ever a parameter value
    cmd = f'cat > /dev/null; echo %{{sender{raw}}} "%{{rcpt.user{raw}}}" > {out}'
    req = req_factory(tmp_path)(command=cmd, sender=sender, orig_rcpt=sender)
    inv = build_invocation(req)
    assert inv.shell and inv.argv[:2] == ("/bin/sh", "-c")
    assert "PWNED" not in inv.argv[2]
    res = deliver_command(req, io.BytesIO(MSG))
    assert res.status is DeliveryStatus.OK, res
    assert not (tmp_path / "PWNED").exists()
    if raw:  # the value arrived literally, as data
        assert sender in out.read_text()


def test_wrapper_argv_splice(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    wrap = _script(tmp_path, "wrap", f'printf "%s\\n" "$@" > "{out}"; shift 2; exec "$@"\n')
    req = req_factory(tmp_path)(
        command="/bin/sh -c 'cat >/dev/null' %{rcpt.user}",
        wrapper=f"{wrap} --as %{{user.username}} %{{mda}}",
    )
    inv = build_invocation(req)
    assert inv.argv == (str(wrap), "--as", req.user, "/bin/sh", "-c", "cat >/dev/null", "acc1+tag")
    assert deliver_command(req, io.BytesIO(MSG)).status is DeliveryStatus.OK
    assert out.read_text().splitlines()[0] == "--as"


def test_wrapper_shell_mode_inlines_command(tmp_path: Path) -> None:
    req = req_factory(tmp_path)(command="cat > /dev/null; exit 0", wrapper="/bin/sh -c '%{mda}'")
    inv = build_invocation(req)
    assert inv.shell and "cat > /dev/null; exit 0" in inv.argv[2]
    assert deliver_command(req, io.BytesIO(MSG)).status is DeliveryStatus.OK


def test_bad_template_is_permfail(tmp_path: Path) -> None:
    res = deliver_command(req_factory(tmp_path)(command="/bin/cat %{nope}"), io.BytesIO(MSG))
    assert res.status is DeliveryStatus.PERMFAIL


@pytest.mark.parametrize(
    "cmd",
    [
        "/bin/sh -c 'cat >/dev/null' x %{sender} %{sender:raw} %{rcpt}",  # argv mode
        "cat >/dev/null; echo %{sender} %{sender:raw} > out.txt",  # shell mode
    ],
)
def test_rm_rf_address_runs_nothing(tmp_path: Path, cmd: str) -> None:
    # CVE-2020-7247's shape: the command runs in the user's home, where a
    # successful injection would delete `victim`.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    for addr in ("a;rm -rf victim;@x", "a`rm -rf victim`@x", "$(rm -rf victim)@x"):
        req = req_factory(tmp_path)(command=cmd, sender=addr, orig_rcpt=addr)
        res = deliver_command(req, io.BytesIO(MSG))
        assert res.status is DeliveryStatus.OK, res
        assert (victim / "keep").exists(), addr


def test_assignment_prefix_uses_shell(tmp_path: Path) -> None:
    out = tmp_path / "o"
    req = req_factory(tmp_path)(command="FOO=bar /bin/sh -c 'cat >/dev/null; echo $FOO' ")
    assert build_invocation(req).shell
    req = req_factory(tmp_path)(command=f'FOO=bar /bin/sh -c "cat >/dev/null; echo \\$FOO > {out}"')
    assert deliver_command(req, io.BytesIO(MSG)).status is DeliveryStatus.OK
    assert out.read_text() == "bar\n"
