"""Serve the OET devices on this machine: what ``make run`` executes.

``python -m ska_oso_oet.run [--devices N]``

1. Uses the Tango database at ``TANGO_HOST`` (default ``localhost:10000``). When none answers
   there and the host is this machine, starts the embedded one (pytango-db ``PyDatabaseds``)
   with one sqlite file per port under ``<repo>/.oet/`` (or ``$OET_DATA_DIR``).
2. Registers the devices described by ``tango-db/oet.json`` (dsconfig), with ``@REPO@``
   replaced by the repository path; ``--devices N`` adds instances 2..N (``oet/executor/2``..).
3. Starts one ``ObservationExecutionTool <instance>`` server per device and waits until each
   device answers. Each server serves its device's REST API on 127.0.0.1: device k on port
   ``$OET_REST_PORT + k - 1`` (default 5000, so oet/executor/1 on 5000; ``OET_REST_PORT=0``
   turns REST off), given to the server as its ``OET_REST_PORT`` (a ``RestPort`` device
   property in the database overrides it).

It then runs until Ctrl-C or SIGTERM and stops what it started (servers first, then the
database), by PID. If one of its children dies on its own it says so, stops the rest and exits
non-zero.

The functions are small so that tests can start the same database and servers.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import IO, Any

import tango

from ska_oso_oet.procedure.settings import DATA_ENV
from ska_oso_oet.procedure.ui import server as rest

DEFAULT_TANGO_HOST = "localhost:10000"
SERVER = "ObservationExecutionTool"
LOOPBACK_ENDPOINT = "giop:tcp:127.0.0.1:"
REPO_TOKEN = "@REPO@"
DEFAULT_REST_PORT = 5000


class LaunchError(RuntimeError):
    """Something this launcher started did not come up; the message says what."""


def repo_root() -> pathlib.Path:
    """The repository this module belongs to (an editable install), else the working dir."""
    here = pathlib.Path(__file__).resolve().parents[2]
    if (here / "tango-db" / "oet.json").is_file():
        return here
    return pathlib.Path.cwd()


def venv_bin() -> pathlib.Path:
    """The bin directory of the running interpreter, where the console scripts live."""
    return pathlib.Path(sys.executable).parent


def parse_tango_host(value: str) -> tuple[str, int]:
    """``"host:port"`` -> ``("host", port)``; raises ValueError with a readable message."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"TANGO_HOST must look like host:port, not {value!r}")
    return host, int(port)


def is_local(host: str) -> bool:
    """True when ``host`` names this machine (so a database can be started for it)."""
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    return host in (socket.gethostname(), socket.getfqdn())


def bind_address(host: str) -> str:
    """The address a database for ``host`` listens on: loopback for loopback names."""
    if host == "localhost" or host.startswith("127."):
        return "127.0.0.1"
    return host


def child_env(tango_host: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the processes we start: TANGO_HOST, and loopback-only when local."""
    env = dict(os.environ if base is None else base)
    env["TANGO_HOST"] = tango_host
    if is_local(parse_tango_host(tango_host)[0]):
        env["ORBendPoint"] = LOOPBACK_ENDPOINT
    return env


def database_answers(host: str, port: int) -> bool:
    """True when a Tango database answers at host:port."""
    try:
        tango.Database(host, port).get_info()
    except tango.DevFailed:
        return False
    return True


def start_database(
    host: str,
    port: int,
    sqlite_path: pathlib.Path | str,
    *,
    log: IO[Any] | int | None = None,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``PyDatabaseds`` on host:port backed by ``sqlite_path``; wait until it answers.

    Raises LaunchError (and leaves nothing running) when it exits or does not answer in time.
    PyDatabaseds exits with status 0 even when it fails to bind, so death is detected by poll.
    """
    tango_host = f"{host}:{port}"
    address = bind_address(host)
    if database_answers(address, port):
        raise LaunchError(f"a Tango database already answers at {tango_host}")
    pathlib.Path(sqlite_path).parent.mkdir(parents=True, exist_ok=True)
    proc_env = child_env(tango_host, env)
    proc_env["PYTANGO_DATABASE_NAME"] = str(sqlite_path)
    cmd = [str(venv_bin() / "PyDatabaseds"), "--host", address, "--port", str(port), "2"]
    proc = subprocess.Popen(
        cmd,
        env=proc_env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        process_group=0,  # Ctrl-C in a terminal reaches us only; we stop it in order
    )
    deadline = time.monotonic() + timeout
    while not database_answers(address, port):
        if proc.poll() is not None:
            raise LaunchError(
                f"the Tango database (PyDatabaseds) on {tango_host} exited with status "
                f"{proc.returncode} before answering (is the port already in use?)"
            )
        if time.monotonic() > deadline:
            stop_process(proc)
            raise LaunchError(f"the Tango database on {tango_host} did not answer in {timeout} s")
        time.sleep(0.05)
    return proc


def load_config(
    path: pathlib.Path | str | None = None,
    repo: pathlib.Path | str | None = None,
    devices: int = 1,
) -> dict[str, Any]:
    """The dsconfig JSON from ``tango-db/oet.json`` with ``@REPO@`` substituted.

    ``devices > 1`` adds server instances 2..N, each serving ``oet/executor/<N>`` with the
    properties of ``oet/executor/1``.
    """
    repo = pathlib.Path(repo) if repo is not None else repo_root()
    path = pathlib.Path(path) if path is not None else repo / "tango-db" / "oet.json"
    text = path.read_text().replace(REPO_TOKEN, str(repo))
    config: dict[str, Any] = json.loads(text)
    if devices < 1:
        raise ValueError("the number of devices must be at least 1")
    instances = config["servers"][SERVER]
    template = instances["1"]
    for n in range(2, devices + 1):
        classes: dict[str, Any] = {}
        for cls, devs in template.items():
            first = copy.deepcopy(next(iter(devs.values())))
            classes[cls] = {f"oet/executor/{n}": first}
        instances.setdefault(str(n), classes)
    return config


def device_names(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Instance -> device names served by that instance, from a dsconfig dict."""
    names: dict[str, list[str]] = {}
    for instance, classes in config["servers"][SERVER].items():
        for devs in classes.values():
            names.setdefault(instance, []).extend(devs)
    return names


def register(
    config: Mapping[str, Any] | pathlib.Path | str,
    tango_host: str,
    devices: int = 1,
    repo: pathlib.Path | str | None = None,
) -> list[Any]:
    """Write the device configuration to the database at ``tango_host`` (dsconfig, update mode).

    ``config`` is a dsconfig dict (already substituted) or the path of a JSON file to load with
    :func:`load_config`. Returns the database calls that were made ([] when nothing changed).
    """
    from dsconfig.json2tango import apply_config, prepare_config

    if not isinstance(config, Mapping):
        config = load_config(config, repo=repo, devices=devices)
    host, port = parse_tango_host(tango_host)
    db = tango.Database(host, port)
    prepared = prepare_config(copy.deepcopy(dict(config)))
    _, _, dbcalls, *_ = apply_config(prepared, db, write=True, update=True)
    return list(dbcalls) + clear_emptied(config, db)


def clear_emptied(config: Mapping[str, Any], db: Any) -> list[Any]:
    """Delete the device properties that ``config`` lists as empty (``[]``), which dsconfig's
    update mode leaves as they were. The chart's dsconfig job does the same with the same
    code: ``charts/ska-oso-oet/files/clear_emptied.py`` is the one copy."""
    path = repo_root() / "charts" / "ska-oso-oet" / "files" / "clear_emptied.py"
    spec = importlib.util.spec_from_file_location("oet_chart_clear_emptied", path)
    if spec is None or spec.loader is None:
        raise LaunchError(f"Cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[Any] = module.clear_emptied(config, db)
    return calls


def start_server(
    instance: int | str,
    env: Mapping[str, str],
    *,
    log: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``ObservationExecutionTool <instance>`` (returns at once; see wait_for_device)."""
    return subprocess.Popen(
        [str(venv_bin() / SERVER), str(instance)],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        process_group=0,
    )


def device_trl(name: str, tango_host: str | None) -> str:
    """A full Tango resource locator, so the caller's own TANGO_HOST does not matter."""
    return f"tango://{tango_host}/{name}" if tango_host else name


def device_answers(name: str, tango_host: str | None = None) -> bool:
    """True when device ``name`` answers ping now."""
    try:
        tango.DeviceProxy(device_trl(name, tango_host)).ping()
    except tango.DevFailed:
        return False
    return True


def wait_for_device(
    name: str,
    timeout: float = 30.0,
    *,
    tango_host: str | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until device ``name`` answers ping; LaunchError if ``proc`` dies or on timeout.

    A fresh DeviceProxy per attempt: a reused one reconnects at most once a second.
    """
    trl = device_trl(name, tango_host)
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise LaunchError(
                f"the device server for {name} exited with status {proc.returncode} "
                "before the device answered"
            )
        try:
            tango.DeviceProxy(trl).ping()
            return
        except tango.DevFailed as exc:
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{name} did not answer within {timeout} s: {error_text(exc)}"
                ) from exc
        time.sleep(0.1)


def error_text(exc: tango.DevFailed) -> str:
    errors = exc.args
    if not errors:
        return str(exc)
    return " ".join(str(errors[0].desc).split())


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` (by PID), then SIGKILL after ``timeout``; returns its exit status."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        except ProcessLookupError:
            pass
    return proc.wait()


# -- the launcher ------------------------------------------------------------------------------


def _say(text: str, err: bool = False) -> None:
    """Print a line; a terminal that has gone (its window closed: EIO, a closed pipe) never
    stops the launcher from stopping what it started."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


class _Stop:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) interrupt start-up and the wait
    (KeyboardInterrupt), not the clean-up."""

    interruptible = True

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.interruptible:
            cls.interruptible = False
            raise KeyboardInterrupt


def rest_port_base(env: Mapping[str, str]) -> int:
    """The REST port of device 1: ``$OET_REST_PORT``, default 5000; 0 turns REST off."""
    value = env.get(rest.PORT_ENV, "").strip() or str(DEFAULT_REST_PORT)
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{rest.PORT_ENV} must be a TCP port number or 0, not {value!r}")
    return int(value)


def rest_env(env: Mapping[str, str], base: int, instance: int) -> dict[str, str]:
    """The environment of server ``instance``: its REST port is base + instance - 1."""
    port = base + instance - 1 if base else 0
    if port > 65535:
        raise LaunchError(f"no REST port for device {instance}: {base} + {instance - 1} > 65535")
    return {**env, rest.PORT_ENV: str(port)}


def rest_url(env: Mapping[str, str]) -> str | None:
    """The base URL of the REST API a server started with ``env`` serves, or None (off)."""
    port = int(env.get(rest.PORT_ENV) or 0)
    if not port:
        return None
    host = env.get(rest.HOST_ENV, "").strip() or rest.DEFAULT_HOST
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{rest.url_host(host)}:{port}{rest.DEFAULT_PREFIX}"


def rest_answers(url: str, device: str, timeout: float = 3.0) -> bool:
    """True when the REST API of ``device`` answers at ``url`` (and not another program)."""
    try:
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=timeout) as response:
            title = str(json.load(response).get("info", {}).get("title", ""))
    except (OSError, ValueError):
        return False
    return f"({device})" in title


def print_banner(
    tango_host: str,
    names: list[str],
    repo: pathlib.Path,
    rest_urls: Mapping[str, str | None] | None = None,
) -> None:
    first = names[0]
    scripts = repo / "scripts"
    urls = rest_urls or {}
    lines = []
    for name in names:
        url = urls.get(name)
        if url is None:
            continue
        if rest_answers(url, name):
            lines.append(f"  REST API of {name}: {url}  (docs: {url}/ui)")
        else:
            lines.append(f"  REST API of {name}: not serving at {url}; see the server's log")
    rest_text = "\n".join(lines)
    first_url = urls.get(first)
    curl = (
        f"""
Or over REST (the same procedures; PUT the ID that POST returned):
  curl {first_url}/procedures
  curl -X POST {first_url}/procedures -H 'Content-Type: application/json' \\
       -d '{{"script": {{"script_type": "filesystem", "script_uri": "file://{scripts}/hello.py"}}}}'
  curl -X PUT {first_url}/procedures/1 -H 'Content-Type: application/json' \\
       -d '{{"state": "RUNNING", "script_args": {{"main": {{"kwargs": {{"name": "REST"}}}}}}}}'
  curl -N {first_url}/stream   # Server-Sent Events of every change
"""
        if first_url
        else ""
    )
    print(
        f"""
The OET is ready.
  TANGO_HOST={tango_host}
  device(s): {", ".join(names)}
{rest_text}

In another shell (with this venv's bin on PATH, e.g. `source .venv/bin/activate`):
  export TANGO_HOST={tango_host}
  export OET_DEVICE={first}
  oet listen &                                   # print state changes as they happen
  oet prepare file://{scripts}/hello.py --kwarg subarray_id=1
  oet start 1 --kwarg name=Tango
  oet prepare file://{scripts}/long_running.py && oet start 2 --kwarg duration=30
  oet stop 2 --abort                             # stop it, then run scripts/abort.py
  oet list
  oet describe 1
{curl}
Ctrl-C stops the server(s) and the database this launcher started.
""",
        flush=True,
    )


def run(tango_host: str, devices: int, repo: pathlib.Path) -> int:
    host, port = parse_tango_host(tango_host)
    started: list[tuple[str, subprocess.Popen[bytes]]] = []  # (what, process), start order
    db_log = None
    try:
        if database_answers(host, port):
            _say(f"Using the Tango database already at {tango_host}.")
        elif not is_local(host):
            raise LaunchError(
                f"no Tango database answers at {tango_host}, and {host} is not this machine, "
                "so none can be started there"
            )
        else:
            data = pathlib.Path(os.environ.get(DATA_ENV) or repo / ".oet")
            sqlite = data / f"tango-{port}.sqlite"
            sqlite.parent.mkdir(parents=True, exist_ok=True)
            db_log = open(data / f"tango-{port}.log", "ab")
            _say(f"Starting a Tango database on {tango_host} ({sqlite})...")
            db = start_database(host, port, sqlite, log=db_log)
            started.append((f"the Tango database (PID {db.pid})", db))

        config = load_config(repo=repo, devices=devices)
        register(config, tango_host)
        env = child_env(tango_host)
        # what the devices keep (history, output): .oet/data unless $OET_DATA_DIR says
        env.setdefault(DATA_ENV, str(repo / ".oet" / "data"))
        base = rest_port_base(env)
        instances = device_names(config)
        names: list[str] = []
        urls: dict[str, str | None] = {}
        for instance in sorted(instances, key=int)[:devices]:
            served = [n for n in instances[instance] if device_answers(n, tango_host)]
            if served:
                raise LaunchError(
                    f"{', '.join(served)} already answers on {tango_host}: another server "
                    "(another `make run`?) serves it; stop that one or use another TANGO_HOST"
                )
            server_env = rest_env(env, base, int(instance))
            server = start_server(instance, server_env)
            started.append((f"the device server {SERVER}/{instance} (PID {server.pid})", server))
            for name in instances[instance]:
                wait_for_device(name, tango_host=tango_host, proc=server)
                names.append(name)
                urls[name] = rest_url(server_env)
        print_banner(tango_host, names, repo, urls)

        while True:
            for what, proc in started:
                if proc.poll() is not None:
                    raise LaunchError(f"{what} exited unexpectedly with status {proc.returncode}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        _say("\nStopping...")
        return 0
    except LaunchError as exc:
        _say(f"oet run: error: {exc}", err=True)
        return 1
    except tango.DevFailed as exc:
        _say(f"oet run: error: {error_text(exc)}", err=True)
        return 1
    finally:
        _Stop.interruptible = False
        # servers first (they were started after the database), then the database
        for what, proc in reversed(started):
            if proc.poll() is None:
                stop_process(proc)
                _say(f"Stopped {what}.")
        if db_log is not None:
            db_log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ska_oso_oet.run",
        description="Serve oet/executor/1..N on the Tango database at TANGO_HOST "
        "(starting an embedded one when none answers there). Ctrl-C stops everything.",
    )
    parser.add_argument(
        "--devices", type=int, default=1, metavar="N", help="serve oet/executor/1..N (default 1)"
    )
    args = parser.parse_args(argv)
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    tango_host = os.environ.get("TANGO_HOST") or DEFAULT_TANGO_HOST
    try:
        parse_tango_host(tango_host)
        rest_port_base(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    # This process is a client of what it starts; keep its own ORB on loopback too.
    os.environ.update(child_env(tango_host))
    signal.signal(signal.SIGINT, _Stop.handler)
    signal.signal(signal.SIGTERM, _Stop.handler)
    signal.signal(signal.SIGHUP, _Stop.handler)
    return run(tango_host, args.devices, repo_root())


if __name__ == "__main__":
    sys.exit(main())
