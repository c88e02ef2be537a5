"""Running the app with uvicorn: in the foreground (`imprag serve`) or in a background thread (tests,
benchmarks). The socket is bound first, so a busy port is one clear error and port 0 picks a free one.

Graceful shutdown (SIGINT/SIGTERM, or `ServerThread.stop`): the listening socket closes, requests in
flight (streams included) run to their end, then the engine finishes whatever is still queued.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import socket
import threading
import time
from typing import Any

import uvicorn

from imprag.errors import UserError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"--port {port}: {host}:{port} is already in use; pick another --port (0 = any free port)"
            ) from None
        raise UserError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: Any, log_level: str = "info", shutdown_timeout_s: float | None = 60.0
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(shutdown_timeout_s) if shutdown_timeout_s is not None else None,
        timeout_keep_alive=5,
        access_log=log_level == "debug" or log_level == "info",
    )


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def serve_forever(
    app: Any, sock: socket.socket, log_level: str = "info", shutdown_timeout_s: float | None = 60.0
) -> None:
    """Run in the foreground until SIGINT/SIGTERM, then shut down gracefully and return (no re-raise)."""
    # uvicorn captures the signals while it runs and re-raises them on the handlers that were set before:
    # make those no-ops so a graceful stop is an ordinary return (exit status 0).
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(uvicorn_config(app, log_level, shutdown_timeout_s)).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class ServerThread:
    """uvicorn in a background thread on a loopback port: `with ServerThread(app) as s: s.url ...`"""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        start_timeout_s: float = 60.0,
    ):
        self.app = app
        self.host, self.port = host, port
        self.log_level = log_level
        self.start_timeout_s = start_timeout_s
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> ServerThread:
        sock = bind(self.host, self.port)
        self.url = url_of(sock)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.log_level))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
