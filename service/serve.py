"""``ledger serve``: the HTTP API in one process, or in N worker processes on one port.

One process (the default): ``create_app(settings)`` on an ``aiohttp.web.AppRunner``; SIGTERM or
SIGINT starts a drain (:func:`drain`): new ``/v1/`` requests answer 503 ``shutting_down``, the
listening socket closes, requests in flight finish (for at most ``SHUTDOWN_TIMEOUT_S``), then the
app's cleanup contexts close the batcher, which commits every queued batch, and the ledger. The
process then exits 0: every request that was answered 2xx is in the ledger.

``--workers N`` (PostgreSQL only: SQLite has one writer at a time, N processes would only queue on
its lock): the parent starts N copies of ``python -m service.cli serve --reuse-port`` in a process
group of their own, each binding the same port with SO_REUSEPORT (the kernel spreads connections
across them) and each with its own Ledger and Batcher. The parent forwards SIGTERM and SIGINT to
them as SIGTERM (each drains as above), and exits once all have exited: 0 when all exited 0,
non-zero otherwise. A worker that exits on its own (a crash, a port it could not bind) stops the
others too: an instance with fewer workers than asked for should be restarted, not limp on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from aiohttp import web
from rich.console import Console

from service.app import begin_drain, create_app
from service.config import Settings

log = logging.getLogger(__name__)

HOST_DEFAULT = "127.0.0.1"
PORT_DEFAULT = 8080
WORKERS_MAX = 64
# How long a drain waits for requests in flight before cancelling them (their batches still
# commit: handlers await the batcher through ``service.handlers.shielded``).
SHUTDOWN_TIMEOUT_S = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How often the parent of a worker pool looks for a worker that exited.
WORKER_POLL_S = 0.1
# Exit code of a pool whose worker failed without saying why (a worker's own code otherwise).
EXIT_WORKER_FAILED = 1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def build_app(settings: Settings) -> web.Application:
    """The app with its default authenticator: signatures checked against the institutions' keys
    (``service.key_resolver``, briefly cached)."""
    return create_app(settings)


async def start(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, web.TCPSite]:
    """Open the app's resources and listen. ``runner.cleanup()`` (through :func:`drain`) undoes it."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


async def drain(runner: web.AppRunner) -> None:
    """Refuse new work, close the listener, let requests in flight finish, then close the batcher
    (committing what is queued) and the ledger. aiohttp's ``cleanup`` does it in that order: sites,
    idle connections, ``on_shutdown``, handlers in flight (up to ``shutdown_timeout``), cleanup contexts."""
    begin_drain(runner.app)
    await runner.cleanup()


def bound_url(runner: web.AppRunner, host: str) -> str:
    """The URL clients use, with the port the socket really got (port 0 picks one)."""
    port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


async def serve_until_signalled(
    settings: Settings,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    announce: Callable[[str], None] = print,
) -> int:
    """Serve until SIGTERM or SIGINT, then drain. Returns 0 once drained."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before anything listens: a signal from now on drains instead of killing the process.
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        runner, _site = await start(build_app(settings), host, port, reuse_port=reuse_port)
        try:
            announce(f"serving {bound_url(runner, host)} (pid {os.getpid()})")
            await stop.wait()
            announce(f"pid {os.getpid()}: draining (requests in flight finish, new ones get 503)")
        finally:
            await drain(runner)
        announce(f"pid {os.getpid()}: drained, exiting")
        return 0
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def serve(settings: Settings, host: str, port: int, *, reuse_port: bool = False, console: Console) -> int:
    """One serving process (a worker of a pool when ``reuse_port``)."""
    if reuse_port:
        _die_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve_until_signalled(settings, host, port, reuse_port=reuse_port, announce=console.print))


def serve_workers(host: str, port: int, workers: int, console: Console) -> int:
    """Start ``workers`` serving processes on one port, forward stop signals, wait for all."""
    commands = [
        [sys.executable, "-m", "service.cli", "serve", "--host", host, "--port", str(port), "--reuse-port"]
        for _ in range(workers)
    ]
    pool = WorkerPool(commands, console)
    return pool.run()


class WorkerPool:
    """The parent of a worker pool: starts the workers, forwards stop signals, reaps them."""

    def __init__(self, commands: Sequence[list[str]], console: Console) -> None:
        self.commands = commands
        self.console = console
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            self._start_all()
            return self._wait_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._stop_all()  # an exception here (a failed start) must not leave workers behind
            for process in self.processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=SHUTDOWN_TIMEOUT_S + 5)

    def _start_all(self) -> None:
        environment = _child_environment()
        for command in self.commands:
            if self.stopping:
                break
            # A process group of their own: a terminal's Ctrl-C reaches the parent only, which
            # forwards it as SIGTERM, instead of interrupting a worker still importing its code.
            self.processes.append(subprocess.Popen(command, env=environment, process_group=0))
        pids = ", ".join(str(process.pid) for process in self.processes)
        self.console.print(f"worker pool {os.getpid()}: {len(self.processes)} workers (pids {pids})")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.console.print(f"worker pool {os.getpid()}: {signal.Signals(signum).name}, draining the workers")
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping = True
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    def _wait_all(self) -> int:
        codes: dict[int, int] = {}
        while len(codes) < len(self.processes):
            for process in self.processes:
                if process.pid in codes or (code := process.poll()) is None:
                    continue
                codes[process.pid] = code
                if not self.stopping:
                    self.console.print(
                        f"[red]worker {process.pid} exited on its own (code {code}): stopping the others[/]"
                    )
                    self._stop_all()
            time.sleep(WORKER_POLL_S)
        return self._pool_exit_code(codes)

    def _pool_exit_code(self, codes: dict[int, int]) -> int:
        failed = {pid: code for pid, code in codes.items() if not self._clean_exit(code)}
        if not failed:
            return 0
        self.console.print(f"[red]workers failed: {', '.join(f'{pid} (code {c})' for pid, c in failed.items())}[/]")
        # A worker's own code when it gave one (3: could not run, 2: bad input), else 1.
        return next((code for code in failed.values() if code > 0), EXIT_WORKER_FAILED)

    def _clean_exit(self, code: int) -> bool:
        # Killed by the SIGTERM we sent: that worker had not yet installed its handler, which it
        # does before it listens, so it never accepted a request and nothing it held is lost.
        return code == 0 or (self.stopping and code == -signal.SIGTERM)


def _child_environment() -> dict[str, str]:
    """The parent's environment, with this code first on the path: the workers run the same
    ``service`` package as the parent, whatever the working directory or installed copy."""
    environment = dict(os.environ)
    source_root = str(Path(__file__).resolve().parents[1])
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, environment.get("PYTHONPATH")]))
    return environment


def _die_with_parent() -> None:
    """A worker gets SIGTERM (and drains) if the pool's parent dies, say of SIGKILL: no worker
    keeps serving a port behind a parent that can no longer stop it. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
