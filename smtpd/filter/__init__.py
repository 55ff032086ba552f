"""Filters: OpenSMTPD's builtin filters and the smtpd-filters line protocol.

- ``builtin``: ``filter NAME phase PHASE match CONDITIONS ACTION`` rules,
  parsed at config time and evaluated in the smtp process.
- ``lines``: the smtpd-filters(7) line protocol, sans-IO.
- ``conn``: one proc-exec filter as the smtp process sees it (a socket the
  parent handed over).
- ``runtime``: chains per listener and the per-session driver.
- ``supervisor``: the parent side: fork/exec as the filter's user, restart
  with backoff, stderr to the log.
"""
