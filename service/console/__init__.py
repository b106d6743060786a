"""The operator console: server-rendered pages under ``/console`` for the settlement day.

Kept light on purpose: ``migrations/env.py`` and the tests import ``service.console.tables`` so
that its tables join the one MetaData, and that must not pull in the web stack. The app factory
mounts the console with ``service.console.setup.setup_console``.

- ``tokens``: the login statement an operator signs (pure: no I/O);
- ``tables``: sessions, used login nonces, audit verification runs;
- ``auth``: redeem a signed statement, open, find and end sessions, the CSRF check;
- ``routes`` (sign-in, windows, institutions, audit) and ``batches`` (the batch pages' slot);
- ``templates/`` (Jinja2, autoescaped) and ``static/console.css``.
"""
