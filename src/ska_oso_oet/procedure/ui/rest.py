"""The Procedure REST resources: an ASGI (FastAPI) app over a ScriptExecutionService.

The routes are those of the reference OET 7.0, under a prefix (default ``/oet/api/v7``):

- ``GET /procedures``, ``GET /procedures/{id}``: summaries (404 for an unknown ID);
- ``POST /procedures`` (201): prepare a script, body :class:`ProcedurePostRequest`;
- ``PUT /procedures/{id}``: body :class:`ProcedurePutRequest`; ``state`` RUNNING starts
  ``main``, STOPPED stops the procedure, no ``state`` changes nothing;
- ``GET /stream``: Server-Sent Events, one ``data:`` JSON object per lifecycle change;
- ``GET /openapi.json`` and the interactive documentation at ``/ui``.

Responses are the JSON that the Tango commands return. The service's refusals become 4xx
responses whose ``detail`` says what to do: 404 unknown procedure, 403 a script the
configuration does not allow, 409 a request the procedure's or the device's state does not
allow, 413 a body over the limit, 422 a malformed body.

The stream: each client has its own listener on the service and its own queue of at most
``stream_queue`` changes. The listener never blocks the thread that reports a change: when a
client reads too slowly and its queue is full, the oldest change is dropped, and the client
is told before the next event how many it missed (topic ``oet.stream.dropped``), so that it
can read ``GET /procedures`` again. A client that disconnects has its listener and queue
removed at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

import ska_oso_oet
from ska_oso_oet.procedure import settings
from ska_oso_oet.procedure.application import (
    ProcedureSummary,
    ScriptExecutionService,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.errors import (
    ProcedureError,
    RequestLimitError,
    ScriptRejectedError,
    UnknownProcedureError,
)
from ska_oso_oet.procedure.states import ProcedureState
from ska_oso_oet.procedure.ui.models import (
    ErrorModel,
    ProcedurePostRequest,
    ProcedurePutRequest,
    RequestError,
    StopResultModel,
    SummaryModel,
    describe_errors,
)
from ska_oso_oet.procedure.ui.summary import summary_to_dict, to_json
from ska_oso_oet.procedure.ui.tango import PREPARE_EXAMPLE

LOGGER = logging.getLogger(__name__)

DEFAULT_PREFIX = "/oet/api/v7"
#: Largest request body accepted by default, in bytes (a device's: its MaxRequestSize).
MAX_BODY = settings.default("max_request_size")
#: Changes kept for one stream client that reads too slowly; older ones are dropped.
STREAM_QUEUE = 1000
#: Stream clients served at once; one more is answered 503.
MAX_STREAMS = 32
#: Seconds without an event after which a stream sends a comment line, so that a client that
#: went away without closing its connection is noticed.
KEEPALIVE = 15.0

#: The reference OET's topic of a procedure's state change (msg_src, new_state).
STATECHANGE_TOPIC = "procedure.lifecycle.statechange"
#: The reference OET's topic announcing the cause of a failure (msg_src, stacktrace).
STACKTRACE_TOPIC = "procedure.lifecycle.stacktrace"
#: Sent to a stream client that missed changes because it read too slowly.
DROPPED_TOPIC = "oet.stream.dropped"

PUT_EXAMPLE = '{"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {}}}}'

_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")

#: Says why the device refuses to prepare or start scripts now, or None when it accepts.
Refusal = Callable[[], str | None]


def check_prefix(prefix: str) -> str:
    """The prefix normalised (no trailing slash); ValueError when it is not a plain path."""
    prefix = prefix.strip().rstrip("/")
    if not _PREFIX.fullmatch(prefix) or any(p in (".", "..") for p in prefix.split("/")):
        raise ValueError(
            f"The REST prefix {prefix!r} must be a path such as {DEFAULT_PREFIX} "
            "(letters, digits and . _ ~ - between slashes)"
        )
    return prefix


# -- errors ------------------------------------------------------------------------------------


@contextmanager
def _refusals() -> Iterator[None]:
    """The service's refusals as HTTP errors whose detail says what to do."""
    try:
        yield
    except RequestError as exc:
        raise HTTPException(422, str(exc)) from None
    except UnknownProcedureError as exc:
        raise HTTPException(404, str(exc)) from None
    except ScriptRejectedError as exc:
        raise HTTPException(403, str(exc)) from None
    except RequestLimitError as exc:  # arguments over MaxArgumentSize
        raise HTTPException(413, str(exc)) from None
    except ProcedureError as exc:  # not READY, another running, ended, no abort script...
        raise HTTPException(409, str(exc)) from None
    except HTTPException:
        raise
    except Exception as exc:  # answered here: an error escaping the app closes the connection
        LOGGER.exception("A REST request failed")
        raise HTTPException(500, f"Internal error: {type(exc).__name__}: {exc}") from None


def _json(value: Any, status: int = 200) -> Response:
    return Response(to_json(value), status_code=status, media_type="application/json")


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorModel, "description": text}
    for code, text in {
        403: "The configuration does not allow this script (ScriptRoots, "
        "AllowedGitRepositories), or it cannot be read",
        404: "No procedure with this ID",
        409: "Refused in the procedure's or the device's present state",
        413: "The request body is too large",
        422: "The request is malformed",
    }.items()
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: _ERRORS[code] for code in codes}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not they say their
    length, before the app has read them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI passes an HTTPException raised while reading the body on
                    # to its handler, which answers it
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return (
            f"The request body is larger than {self.limit} bytes (device property MaxRequestSize)"
        )

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": self._detail()}, status_code=413)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


# -- the stream --------------------------------------------------------------------------------


class _Client:
    """One stream client: a bounded queue filled from the service's threads, emptied by the
    event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        # summaries, and the output batches and script messages of procedure.output
        self.queue: collections.deque[Any] = collections.deque()
        self.dropped = 0  # changes dropped and not yet reported to the client
        self.dropped_total = 0
        self.done = False
        self.wake = asyncio.Event()
        self._pending = False
        self._lock = threading.Lock()

    def put(self, summary: Any) -> None:
        """The service's listener: called in order from the thread of each change; never
        waits for the client."""
        with self._lock:
            if len(self.queue) >= self.size:
                self.queue.popleft()
                self.dropped += 1
                self.dropped_total += 1
            self.queue.append(summary)
            if self._pending:
                return
            self._pending = True
        self._notify()

    def finish(self) -> None:
        with self._lock:
            self.done = True
        self._notify()

    def _notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:  # the loop has closed: the server is gone
            pass

    def take(self) -> tuple[list[Any], int, bool]:
        """(changes, dropped count, done); in the event loop's thread."""
        with self._lock:
            items = list(self.queue)
            self.queue.clear()
            dropped, self.dropped = self.dropped, 0
            self._pending = False
            self.wake.clear()
            return items, dropped, self.done


class StreamHub:
    """The stream clients of one app: each with its own listener on the service."""

    def __init__(self, service: ScriptExecutionService, queue_size: int, max_clients: int):
        self.service = service
        self.queue_size = queue_size
        self.max_clients = max_clients
        self._clients: set[_Client] = set()
        self._closed = False
        self._cond = threading.Condition()

    def open(self) -> _Client:
        client = _Client(asyncio.get_running_loop(), self.queue_size)
        with self._cond:
            if self._closed:
                raise HTTPException(503, "The REST server is stopping")
            if len(self._clients) >= self.max_clients:
                raise HTTPException(
                    503, f"Too many stream clients (at most {self.max_clients}); try later"
                )
            self._clients.add(client)
            self.service.add_listener(client.put)
            self.service.add_output_listener(client.put)
            self._cond.notify_all()
        return client

    def close_client(self, client: _Client) -> None:
        with self._cond:
            if client in self._clients:
                self._clients.discard(client)
                try:
                    self.service.remove_listener(client.put)
                    self.service.remove_output_listener(client.put)
                except ValueError:
                    pass
                self._cond.notify_all()

    def close(self) -> None:
        """End every stream (the server is stopping) and accept no more."""
        with self._cond:
            self._closed = True
            clients = list(self._clients)
        for client in clients:
            client.finish()

    @property
    def count(self) -> int:
        with self._cond:
            return len(self._clients)

    def dropped(self) -> list[int]:
        """How many changes each connected client has missed so far."""
        with self._cond:
            return [c.dropped_total for c in self._clients]

    def wait_for_count(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` clients are connected; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._clients) == count, timeout)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + to_json(data).encode() + b"\n\n"


def _events(summary: ProcedureSummary) -> bytes:
    result = summary_to_dict(summary)
    text = _event(
        {
            "topic": STATECHANGE_TOPIC,
            "msg_src": summary.id,
            "new_state": result["state"],
            "result": result,
        }
    )
    if summary.state is ProcedureState.FAILED and summary.history.stacktrace:
        text += _event(
            {
                "topic": STACKTRACE_TOPIC,
                "msg_src": summary.id,
                "stacktrace": summary.history.stacktrace,
            }
        )
    return text


def _dropped(count: int) -> bytes:
    return _event(
        {
            "topic": DROPPED_TOPIC,
            "dropped": count,
            "detail": f"{count} changes were dropped because this client read too slowly; "
            "GET /procedures for the present state",
        }
    )


class EventStream(Response):
    """A ``text/event-stream`` response fed by a hub client; it ends when the client
    disconnects (noticed at once, between events too) or the hub closes."""

    media_type = "text/event-stream"

    def __init__(self, hub: StreamHub, keepalive: float) -> None:
        # as StreamingResponse does: no body, so no Content-Length
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.hub = hub
        self.keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self.hub.open()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self._pump(client, send)
                except OSError:  # the client went away mid-write
                    pass
                group.cancel_scope.cancel()
        finally:
            self.hub.close_client(client)

    async def _pump(self, client: _Client, send: Callable[[Message], Awaitable[None]]) -> None:
        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        # the first line says the client is subscribed: a change after it will be sent
        await write(b": connected to the OET event stream\n\n")
        while True:
            items, dropped, done = client.take()
            if dropped:
                await write(_dropped(dropped))
            for summary in items:
                await write(
                    _events(summary) if isinstance(summary, ProcedureSummary) else summary.to_sse()
                )
            if done:
                break
            if not items and not dropped:
                try:
                    await asyncio.wait_for(client.wake.wait(), self.keepalive)
                except TimeoutError:
                    await write(b": keepalive\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- the app -----------------------------------------------------------------------------------


def create_app(
    service: ScriptExecutionService,
    *,
    prefix: str = DEFAULT_PREFIX,
    refusal: Refusal | None = None,
    name: str = "",
    stream_queue: int = STREAM_QUEUE,
    max_streams: int = MAX_STREAMS,
    keepalive: float = KEEPALIVE,
) -> FastAPI:
    """The REST app over ``service``. ``refusal`` says why preparing or starting is refused
    now (the device's adminMode), or None when it is allowed; ``name`` (the device's) goes
    into the API's title."""
    prefix = check_prefix(prefix)
    refused = refusal or (lambda: None)
    hub = StreamHub(service, stream_queue, max_streams)
    title = "Observation Execution Tool" + (f" ({name})" if name else "")
    app = FastAPI(
        title=title,
        version=ska_oso_oet.__version__,
        description="Procedures of the OET, as the reference OET's REST API serves them; the "
        "same procedures as the Tango device's. Lifecycle changes stream as Server-Sent "
        f"Events from {prefix}/stream.",
        openapi_url=f"{prefix}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.hub = hub

    def check_accepting() -> None:
        reason = refused()
        if reason:
            raise HTTPException(409, reason)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        in_body = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
        not_json = "json" not in request.headers.get("content-type", "")
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = "The request body is not valid JSON"
        elif not_json and in_body and all(len(e.get("loc", ())) == 1 for e in in_body):
            detail = (
                "The request body must be JSON, sent with the header "
                "Content-Type: application/json"
            )
        else:
            detail = "Invalid request: " + describe_errors(errors, skip=("body", "path"))
        if in_body:
            example = PREPARE_EXAMPLE if request.method == "POST" else PUT_EXAMPLE
            detail += f"; expected e.g. {example}"
        brief = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse({"detail": detail, "errors": brief}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"detail": f"Internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    procedures = f"{prefix}/procedures"

    @app.get(
        procedures,
        summary="Every procedure",
        description="Summaries of every procedure the device holds, oldest first.",
        responses={200: {"model": list[SummaryModel]}},
        tags=["Procedures"],
    )
    @app.get(procedures + "/", include_in_schema=False)  # the reference's form of the path
    def get_procedures() -> Response:
        return _json(service.summarise())

    @app.get(
        procedures + "/{procedure_id}",
        summary="One procedure",
        responses={200: {"model": SummaryModel}, **_errors(404, 422)},
        tags=["Procedures"],
    )
    def get_procedure(procedure_id: int) -> Response:
        with _refusals():
            (summary,) = service.summarise([procedure_id])
        return _json(summary)

    @app.post(
        procedures,
        status_code=201,
        summary="Prepare a script",
        description="Loads the script in a process of its own and runs its init; returns at "
        "once, with the procedure CREATING. Follow it on the stream, or GET it.",
        responses={201: {"model": SummaryModel}, **_errors(403, 409, 413, 422)},
        tags=["Procedures"],
    )
    @app.post(procedures + "/", status_code=201, include_in_schema=False)
    def create_procedure(body: ProcedurePostRequest) -> Response:
        check_accepting()
        with _refusals():
            return _json(service.prepare(body.to_command()), 201)

    @app.put(
        procedures + "/{procedure_id}",
        summary="Start, pause, resume or stop a procedure",
        description="state RUNNING: start the procedure's main with script_args.main (it must "
        "be READY, unless force_start). state STOPPED: stop it; with abort, the abort script "
        "runs once it has stopped. state PAUSED: pause it at its script's next checkpoint(); "
        "RUNNING on a PAUSED procedure (or one with a pause pending) resumes it. No state: "
        "nothing changes.",
        responses={
            200: {"model": SummaryModel | StopResultModel},
            **_errors(404, 409, 413, 422),
        },
        tags=["Procedures"],
    )
    def update_procedure(procedure_id: int, body: ProcedurePutRequest) -> Response:
        with _refusals():
            (summary,) = service.summarise([procedure_id])  # 404 before any other refusal
            if body.state is None:
                return _json(summary)
            if body.state == "PAUSED":
                return _json(service.pause(procedure_id))
            if body.state == "RUNNING" and (
                summary.state is ProcedureState.PAUSED or summary.pause_pending
            ):
                return _json(service.resume(procedure_id))
            if body.state == "RUNNING":
                check_accepting()
                command = StartProcessCommand(
                    procedure_id,
                    "main",
                    body.script_args.main.to_input(),
                    force_start=body.force_start,
                )
                return _json(service.start(command))
            aborts = service.stop(StopProcessCommand(procedure_id, body.abort))
            message = f"Stopping procedure {procedure_id}"
            if aborts:
                message += f"; abort procedure {aborts[0].id} runs once it has stopped"
            return _json({"abort_message": message, "abort_procedures": aborts})

    @app.get(
        f"{prefix}/stream",
        summary="Lifecycle changes, as Server-Sent Events",
        description="One `data:` line of JSON per change: `topic` "
        f"({STATECHANGE_TOPIC}), `msg_src` (the procedure ID), `new_state` and `result` (the "
        f"summary); a failure is followed by {STACKTRACE_TOPIC}. A client that reads too "
        f"slowly misses the oldest changes and is told how many ({DROPPED_TOPIC}).",
        response_class=EventStream,
        status_code=200,
        responses={200: {"content": {"text/event-stream": {}}}, 503: {"model": ErrorModel}},
        tags=["Events"],
    )
    async def stream() -> EventStream:
        return EventStream(hub, keepalive)

    _add_docs(app, prefix, title)
    return app


def _add_docs(app: FastAPI, prefix: str, title: str) -> None:
    """Swagger UI at <prefix>/ui, its scripts served by this server (swagger-ui-bundle) rather
    than a CDN, so that the page works on a control network without internet access."""
    static = f"{prefix}/ui/static"
    app.mount(static, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    openapi_url = str(app.openapi_url)

    @app.get(f"{prefix}/ui", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon-32x32.png",
        )

    if prefix:

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse(f"{prefix}/ui")
