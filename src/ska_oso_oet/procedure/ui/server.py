"""Serving the REST app (:mod:`.rest`) from a thread of the device server: uvicorn on a socket
bound before the thread starts, so that a busy port is known (and logged) at once.

:func:`serve` is what the Tango device calls at ``init_device``: it never raises; when the
REST API cannot be served (a busy port, a bad setting) it logs why and returns None, and the
device serves on without it. :meth:`RestServer.stop` ends the streams, asks uvicorn to exit
and joins its thread within a bound.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time

import uvicorn

from ska_oso_oet.procedure.application import ScriptExecutionService
from ska_oso_oet.procedure.ui.rest import (
    DEFAULT_PREFIX,
    KEEPALIVE,
    MAX_STREAMS,
    STREAM_QUEUE,
    BodyLimit,
    Refusal,
    StreamHub,
    create_app,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Environment variables that give the REST port and host of a device whose RestPort or
#: RestHost property is not set (``make run`` and the Helm chart use them).
PORT_ENV = "OET_REST_PORT"
HOST_ENV = "OET_REST_HOST"
#: Seconds to wait for uvicorn to start, and to stop.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def default_port() -> int:
    """``$OET_REST_PORT``, else 0 (off)."""
    value = os.environ.get(PORT_ENV, "").strip()
    return int(value) if value.isdigit() else 0


def default_host() -> str:
    """``$OET_REST_HOST``, else 127.0.0.1."""
    return os.environ.get(HOST_ENV, "").strip() or DEFAULT_HOST


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class RestServer:
    """uvicorn serving one app on one bound socket, in a daemon thread."""

    def __init__(
        self,
        service: ScriptExecutionService,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        prefix: str = DEFAULT_PREFIX,
        refusal: Refusal | None = None,
        name: str = "",
        max_body: int | None = None,
        stream_queue: int = STREAM_QUEUE,
        max_streams: int = MAX_STREAMS,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self.app = create_app(
            service,
            prefix=prefix,
            refusal=refusal,
            name=name,
            stream_queue=stream_queue,
            max_streams=max_streams,
            keepalive=keepalive,
        )
        self.hub: StreamHub = self.app.state.hub
        self.prefix = prefix.rstrip("/")
        self.host = host
        self.port = port
        self.name = name
        config = uvicorn.Config(
            BodyLimit(self.app, max_body or service.max_request_size),
            log_config=None,  # the server's logging, as set up by the device server
            access_log=False,
            log_level="warning",  # its start and stop lines name a "process": it is a thread
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
            limit_concurrency=max_streams + 32,
        )
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL of the API, e.g. http://127.0.0.1:5000/oet/api/v7."""
        return f"http://{url_host(self.host)}:{self.port}{self.prefix}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Bind and serve; OSError when the address cannot be bound, TimeoutError when uvicorn
        does not start in time."""
        infos = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"oet-rest-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)  # uvicorn has no event to wait on; it starts in milliseconds
        if not self._server.started:
            self.stop()
            raise TimeoutError("the REST server did not start")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End every stream, stop uvicorn and wait (at most ``timeout`` s) for its thread."""
        self.hub.close()
        self._server.should_exit = True
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._server.force_exit = True
                thread.join(1.0)
            if thread.is_alive():
                LOGGER.warning("The REST server on port %s did not stop in time", self.port)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._thread = None


def serve(
    service: ScriptExecutionService,
    host: str | None,
    port: int | None,
    *,
    prefix: str = DEFAULT_PREFIX,
    refusal: Refusal | None = None,
    name: str = "",
) -> RestServer | None:
    """Start the REST API of a device (``port`` 0: off; None: from the environment). Never
    raises: a setting that cannot be served is logged, and None returned."""
    host = (host or "").strip() or default_host()
    try:
        port = default_port() if port is None else int(port)
    except ValueError:
        LOGGER.error("REST API off: the port %r is not a number", port)
        return None
    if port == 0:
        return None
    if not 0 < port < 65536:
        LOGGER.error("REST API off: port %s is not a TCP port (1-65535)", port)
        return None
    try:
        server = RestServer(service, host, port, prefix=prefix, refusal=refusal, name=name)
    except ValueError as exc:
        LOGGER.error("REST API off: %s", exc)
        return None
    if not is_loopback(host):
        LOGGER.warning(
            "REST API of %s on %s, which is not a loopback address: reachable from other "
            "machines, as the RestHost setting chose",
            name or "the device",
            host,
        )
    try:
        server.start()
    except OSError as exc:
        hint = (
            "another program uses the port; set RestPort (or OET_REST_PORT) to a free one"
            if exc.errno == errno.EADDRINUSE
            else "check RestHost (or OET_REST_HOST)"
        )
        LOGGER.error(
            "REST API off: cannot listen on %s:%s (%s): %s. The Tango device serves on without it",
            host,
            port,
            exc.strerror or exc,
            hint,
        )
        return None
    except Exception as exc:
        LOGGER.error("REST API off: %s", exc)
        return None
    LOGGER.info("REST API of %s at %s (docs: %s/ui)", name or "the device", server.url, server.url)
    return server
