# make run: the daemon in the foreground on conf/smtpd.conf
# make test: ruff, mypy --strict and pytest
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Python >= 3.12 is required: 3.11 still ships a stdlib module named smtpd.
FIND_PYTHON = for p in python3.13 python3.12 $$HOME/.pyenv/versions/3.13*/bin/python3 \
	$$HOME/.pyenv/versions/3.12*/bin/python3 /root/.pyenv/versions/3.1[3-9]*/bin/python3 \
	/root/.pyenv/versions/3.12*/bin/python3 python3; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    command -v $$p; exit 0; fi; done; \
	echo "pysmtpd needs Python >= 3.12 (python3.13, python3.12 or one under ~/.pyenv/versions)" >&2; exit 1

.PHONY: run test install install-links uninstall clean lint users fuzz

# As root the daemon drops privileges to _smtpd and _smtpq (DESIGN.md §1):
# create them once, as an installation would.
users:
	@if [ "$$(id -u)" = 0 ]; then for u in _smtpd _smtpq; do \
	  id $$u >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/empty \
	    --shell /usr/sbin/nologin $$u || exit 1; done; fi
$(STAMP): pyproject.toml
	@py=$$($(FIND_PYTHON)) || exit 1; \
	  [ -x $(PY) ] || $$py -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q -e '.[test]' && touch $(STAMP)

# make install [PREFIX=/usr/local] as root: docs/install.md.  Every path can be
# moved (DESTDIR for packagers; tests install into a temp dir).
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
SPOOLDIR ?= /var/spool/smtpd
RUNDIR ?= /var/run
UNITDIR ?= /etc/systemd/system
INSTALL_ENV = DESTDIR='$(DESTDIR)' PREFIX='$(PREFIX)' SYSCONFDIR='$(SYSCONFDIR)' \
	SPOOLDIR='$(SPOOLDIR)' RUNDIR='$(RUNDIR)' UNITDIR='$(UNITDIR)' PIP_OPTS='$(PIP_OPTS)' \
	CREATE_USERS='$(or $(CREATE_USERS),yes)' EXTRAS='$(EXTRAS)'

install:
	@py='$(PYTHON)'; [ -n "$$py" ] || py=$$($(FIND_PYTHON)) || exit 1; \
	  $(INSTALL_ENV) PYTHON="$$py" sh contrib/install.sh install

# /usr/sbin/sendmail, /usr/lib/sendmail, /usr/bin/mailq and /usr/bin/newaliases
# pointing at PREFIX; refused while another MTA owns them.
install-links:
	@$(INSTALL_ENV) sh contrib/install.sh links

uninstall:
	@$(INSTALL_ENV) sh contrib/install.sh uninstall

run: $(STAMP) users
	mkdir -p var
	$(VENV)/bin/smtpd -d -f conf/smtpd.conf

lint: $(STAMP)
	$(VENV)/bin/ruff check imsg smtpd smtpctl tests bench
	$(VENV)/bin/mypy

test: lint users
	$(VENV)/bin/pytest -q

# A release-sized fuzz run: the hypothesis targets of tests/fuzz and the SMTP
# protocol's own, with many more examples (tests/fuzz/fuzz_profiles.py).
fuzz: $(STAMP)
	PYSMTPD_FUZZ=long $(VENV)/bin/pytest -q tests/fuzz \
	  tests/smtp/test_protocol_fuzz.py --hypothesis-show-statistics

clean:
	rm -rf $(VENV) var
