#!/bin/sh
# Install, link or uninstall pysmtpd system-wide (docs/install.md).
# Called by `make install`, `make install-links` and `make uninstall`, which
# pass the paths below; every one can be overridden for packaging and tests:
#
#   DESTDIR     staging root, prepended to every path written (packagers)
#   PREFIX      /usr/local: venv in PREFIX/lib/pysmtpd, commands in sbin, bin
#   SYSCONFDIR  /etc: smtpd.conf and aliases (kept when present)
#   SPOOLDIR    /var/spool/smtpd
#   RUNDIR      /var/run: the control socket smtpd.sock
#   UNITDIR     /etc/systemd/system: pysmtpd.service
#   PYTHON      a Python >= 3.12 (the Makefile finds one)
#   PIP_OPTS    extra pip options (--no-index --find-links DIR offline)
#   EXTRAS      optional extras of pyproject.toml, e.g. fast (uvloop for the
#               children's event loop: smtpd/eventloop.py)
#   CREATE_USERS  yes: as root, add _smtpd and _smtpq when missing
#
# The commands are small sh wrappers running `python -I` from the venv, not
# the venv's console scripts: -I keeps the current directory and PYTHON*
# variables out of sys.path (root runs sendmail from anywhere), and the
# wrappers do not depend on the venv's absolute shebangs, so a DESTDIR
# staging tree works once moved into place.
set -eu
umask 022

: "${DESTDIR:=}" "${PREFIX:=/usr/local}" "${SYSCONFDIR:=/etc}"
: "${SPOOLDIR:=/var/spool/smtpd}" "${RUNDIR:=/var/run}" "${UNITDIR:=/etc/systemd/system}"
: "${PIP_OPTS:=}" "${CREATE_USERS:=yes}" "${EXTRAS:=}"
SRC=$(cd "$(dirname "$0")/.." && pwd)
LIBDIR=$PREFIX/lib/pysmtpd
MARK="# pysmtpd wrapper (contrib/install.sh)"
# name  directory  module  function: the [project.scripts] of pyproject.toml
COMMANDS="smtpd:sbin:smtpd.__main__:main
smtpctl:sbin:smtpctl.__main__:main
sendmail:sbin:smtpctl.sendmail:main
makemap:sbin:smtpctl.makemap:main
newaliases:sbin:smtpctl.makemap:newaliases_main
mailq:bin:smtpctl.mailq:main"
# where other software looks for a sendmail(8) (LSB; BSD habits)
LINKS="usr/sbin/sendmail:sbin/sendmail
usr/lib/sendmail:sbin/sendmail
usr/bin/mailq:bin/mailq
usr/bin/newaliases:sbin/newaliases"

IMPORT_ALL='
import importlib, pkgutil, sys
bad = []
for top in ("imsg", "smtpd", "smtpctl"):
    for m in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        if not m.name.endswith(".__main__"):
            try:
                importlib.import_module(m.name)
            except ImportError as exc:
                bad.append(f"install: {m.name}: {exc}")
for line in bad:
    print(line, file=sys.stderr)
sys.exit(1 if bad else 0)'

say() { printf '%s\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ] && [ -z "$DESTDIR" ]; }

venv() {
    : "${PYTHON:?PYTHON must name a Python >= 3.12}"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 12))' ||
        { say "install: $PYTHON is older than 3.12" >&2; exit 1; }
    new=$DESTDIR$LIBDIR.new
    rm -rf "$new"
    mkdir -p "$(dirname "$new")"
    # Build beside the running one and swap: a failed pip leaves the old
    # installation untouched, and the swap is two renames.
    "$PYTHON" -m venv "$new"
    # Built from a copy of the sources: nothing is written into the checkout
    # (root installing from a user's clone), and no stale build/ directory
    # can bring back a module that was deleted.
    copy=$(mktemp -d)
    trap 'rm -rf "$copy"' EXIT
    cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/imsg" "$SRC/smtpd" "$SRC/smtpctl" "$copy"
    find "$copy" -name __pycache__ -prune -exec rm -rf {} +
    # shellcheck disable=SC2086
    target=$copy
    [ -z "$EXTRAS" ] || target="$copy[$EXTRAS]"
    "$new/bin/python" -m pip install -q --disable-pip-version-check $PIP_OPTS "$target"
    # Every module must import before the swap: a dependency pyproject.toml
    # forgot would otherwise surface as a daemon that cannot start.
    "$new/bin/python" -I -c "$IMPORT_ALL" ||
        { rm -rf "$new"; say "install: the new venv is incomplete; nothing changed" >&2; exit 1; }
    if [ -e "$DESTDIR$LIBDIR" ]; then
        rm -rf "$DESTDIR$LIBDIR.old"
        mv "$DESTDIR$LIBDIR" "$DESTDIR$LIBDIR.old"
    fi
    mv "$new" "$DESTDIR$LIBDIR"
    rm -rf "$DESTDIR$LIBDIR.old"
    say "installed $("$DESTDIR$LIBDIR/bin/python" -I -c \
        'import smtpd; print("pysmtpd", smtpd.__version__)') in $DESTDIR$LIBDIR"
}

wrappers() {
    printf '%s\n' "$COMMANDS" | while IFS=: read -r name dir module func; do
        mkdir -p "$DESTDIR$PREFIX/$dir"
        out=$DESTDIR$PREFIX/$dir/$name
        # smtpctl needs the socket; the others read smtpd.conf for it and
        # the spool (smtpctl/localconf.py).  Both are the compiled-in
        # defaults with the default paths, and the caller's value wins.
        case $name in
            smtpd) env="" ; pre="-f $SYSCONFDIR/smtpd.conf " ;;
            smtpctl) env="SMTPCTL_SOCKET=\${SMTPCTL_SOCKET:-$RUNDIR/smtpd.sock}"; pre="" ;;
            *) env="SMTPCTL_CONFIG=\${SMTPCTL_CONFIG:-$SYSCONFDIR/smtpd.conf}"; pre="" ;;
        esac
        {
            say "#!/bin/sh"
            say "$MARK"
            [ -n "$env" ] && say "export $env"
            # smtpd: a later -f on the command line wins over this one
            [ -n "$pre" ] && say "set -- $pre\"\$@\""
            say "exec $LIBDIR/bin/python -I -c 'import sys; from $module import $func;" \
                "sys.argv[0] = \"$name\"; sys.exit($func())' \"\$@\""
        } > "$out.tmp"
        chmod 755 "$out.tmp"
        mv "$out.tmp" "$out"
    done
}

subst() {  # the shipped files name the default paths: rewrite them
    sed -e "s|/usr/local/sbin/|$PREFIX/sbin/|g" \
        -e "s|/etc/smtpd.conf|$SYSCONFDIR/smtpd.conf|g" \
        -e "s|/etc/aliases|$SYSCONFDIR/aliases|g" \
        -e "s|/var/spool/smtpd|$SPOOLDIR|g" \
        -e "s|/var/run/smtpd.sock|$RUNDIR/smtpd.sock|g" "$1"
}

files() {
    mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR" "$DESTDIR$RUNDIR"
    subst "$SRC/contrib/pysmtpd.service" > "$DESTDIR$UNITDIR/pysmtpd.service"
    chmod 644 "$DESTDIR$UNITDIR/pysmtpd.service"
    # An existing smtpd.conf (OpenSMTPD's grammar: theirs works) is kept.
    if [ ! -e "$DESTDIR$SYSCONFDIR/smtpd.conf" ]; then
        subst "$SRC/contrib/smtpd.conf" > "$DESTDIR$SYSCONFDIR/smtpd.conf"
        chmod 644 "$DESTDIR$SYSCONFDIR/smtpd.conf"
        say "installed $DESTDIR$SYSCONFDIR/smtpd.conf"
    else
        say "kept $DESTDIR$SYSCONFDIR/smtpd.conf"
    fi
    if [ ! -e "$DESTDIR$SYSCONFDIR/aliases" ]; then
        # RFC 5321 section 4.5.1: postmaster must be deliverable
        printf 'postmaster: root\nabuse: root\nmailer-daemon: postmaster\n' \
            > "$DESTDIR$SYSCONFDIR/aliases"
        chmod 644 "$DESTDIR$SYSCONFDIR/aliases"
    fi
    # smtpd completes the tree (queue/, incoming/ ...) with its own modes at
    # start.  The root is 0711, as upstream; offline/ is made now so that
    # sendmail works before the first start (smtpd/parent.py prepare_spool):
    # anyone may drop a file, nobody may list, sticky.
    mkdir -p "$DESTDIR$SPOOLDIR/offline"
    chmod 711 "$DESTDIR$SPOOLDIR"
    chmod 1733 "$DESTDIR$SPOOLDIR/offline"
    if is_root; then
        for u in _smtpd _smtpq; do
            id "$u" >/dev/null 2>&1 || [ "$CREATE_USERS" != yes ] || useradd --system \
                --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin "$u"
        done
        chown root:root "$DESTDIR$SPOOLDIR"
        if id _smtpq >/dev/null 2>&1; then
            chown "root:$(id -gn _smtpq)" "$DESTDIR$SPOOLDIR/offline"
        fi
    else
        say "not root (or DESTDIR set): create the _smtpd and _smtpq users and" \
            "chown root $SPOOLDIR, root:_smtpq $SPOOLDIR/offline when installing for real"
    fi
}

links() {
    status=0
    for pair in $LINKS; do
        link=${pair%%:*}; target=$PREFIX/${pair#*:}
        path=$DESTDIR/$link
        if [ -L "$path" ] && [ "$(readlink "$path")" = "$target" ]; then
            continue
        fi
        if [ -e "$path" ] || [ -L "$path" ]; then
            say "install-links: /$link belongs to another MTA: disable and remove" \
                "it, or divert it (dpkg-divert --local --rename --add /$link);" \
                "see docs/install.md" >&2
            status=1
            continue
        fi
        mkdir -p "$(dirname "$path")"
        ln -s "$target" "$path"
        say "/$link -> $target"
    done
    return $status
}

uninstall() {
    for pair in $LINKS; do
        path=$DESTDIR/${pair%%:*}
        if [ -L "$path" ] && [ "$(readlink "$path")" = "$PREFIX/${pair#*:}" ]; then
            rm -f "$path"
        fi
    done
    printf '%s\n' "$COMMANDS" | while IFS=: read -r name dir _; do
        f=$DESTDIR$PREFIX/$dir/$name
        # only our own wrappers: never another MTA's sendmail
        if [ -f "$f" ] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
    done
    rm -rf "$DESTDIR$LIBDIR" "$DESTDIR$LIBDIR.new" "$DESTDIR$LIBDIR.old"
    rm -f "$DESTDIR$UNITDIR/pysmtpd.service"
    say "removed pysmtpd; kept $SYSCONFDIR/smtpd.conf, $SPOOLDIR and the users"
}

case ${1:-install} in
    install) venv; wrappers; files ;;
    links) links ;;
    uninstall) uninstall ;;
    *) say "usage: $0 install|links|uninstall" >&2; exit 2 ;;
esac
