"""The Tango databases of the end-to-end tests: pytango-db (PyDatabaseds, what ``make run``
starts), and the production one, Tango's C++ DataBaseds on MariaDB.

Control rooms run this one, not pytango-db. Both servers are started here, in a temporary folder,
on free loopback ports, from Debian's packages (``tango-db`` and ``mariadb-server``, which
``.ci/run`` installs): MariaDB gets a data folder of its own, the ``tango`` schema is loaded from
the files the ``tango-db`` package ships (``dpkg -L tango-db``), then DataBaseds serves it. Nothing
here reads or writes the machine's own MariaDB or ``/etc/tangorc``; everything started is stopped
by PID.

``tango_database`` starts either kind.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ska_oso_oet import run
from tests.helpers import free_port

DATABASEDS = pathlib.Path("/usr/lib/tango/DataBaseds")
#: The package's install script: it sources create_db_tables.sql and stored_proc.sql, then
#: creates the database server's own devices.
SCHEMA = pathlib.Path("/usr/share/dbconfig-common/data/tango-db/install/mysql")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
PACKAGES = "tango-db mariadb-server"
START_TIMEOUT = 60.0
USER = "tango"
PASSWORD = "tango-e2e"  # a throwaway account in a throwaway server on loopback


class Unavailable(Exception):
    """The C++ Tango database cannot be run on this machine; the message says why."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing() -> str | None:
    """Why the C++ database can't run here, or None when everything it needs is installed."""
    needed = {
        "DataBaseds": DATABASEDS if DATABASEDS.is_file() else None,
        "the tango-db schema": SCHEMA if SCHEMA.is_file() else None,
        "mariadbd": _which("mariadbd"),
        "mariadb-install-db": _which("mariadb-install-db"),
        "mariadb (client)": _which("mariadb"),
    }
    absent = [name for name, found in needed.items() if not found]
    if absent:
        return (
            f"{', '.join(absent)} not found: install the Debian packages {PACKAGES} "
            f"(apt-get install {PACKAGES}) to run the end-to-end tests on the C++ Tango database"
        )
    return None


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _wait_for_line(proc: subprocess.Popen[bytes], log: pathlib.Path, words: bytes) -> None:
    """Copy the process's output to ``log`` until a line holds ``words``; Unavailable when the
    process ends or stays silent for START_TIMEOUT. The copying goes on in a thread."""
    assert proc.stdout is not None
    found = threading.Event()

    def copy() -> None:
        assert proc.stdout is not None
        with open(log, "ab") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if words in line:
                    found.set()

    threading.Thread(target=copy, daemon=True, name=f"log {log.name}").start()
    deadline = time.monotonic() + START_TIMEOUT
    while not found.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise Unavailable(f"{proc.args[0]} did not get ready ({log}):\n{text}")


def _client(sock: pathlib.Path, *sql_args: str, stdin: bytes | None = None) -> str:
    cmd = [_which("mariadb") or "mariadb", "--no-defaults", "-S", str(sock), "-u", "root"]
    done = subprocess.run(
        [*cmd, *sql_args], input=stdin, capture_output=True, timeout=START_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise Unavailable(
            f"mariadb {' '.join(sql_args)[:80]} failed: {done.stderr.decode()[-2000:]}"
        )
    return done.stdout.decode()


@contextmanager
def mariadb(folder: pathlib.Path) -> Iterator[tuple[int, pathlib.Path]]:
    """A MariaDB server of its own in ``folder``, on a free loopback port: (port, socket)."""
    data = folder / "mariadb"
    sock = folder / "mariadb.sock"
    as_root = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root otherwise
    install = subprocess.run(
        [
            _which("mariadb-install-db") or "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *as_root,
        ],
        capture_output=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    if install.returncode != 0:
        raise Unavailable(f"mariadb-install-db failed: {install.stderr.decode()[-2000:]}")
    port = free_port()
    proc = subprocess.Popen(
        [
            _which("mariadbd") or "mariadbd",
            "--no-defaults",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={sock}",
            f"--pid-file={folder / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            *as_root,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_line(proc, folder / "mariadb.log", b"ready for connections")
        yield port, sock
    finally:
        _stop(proc)


@contextmanager
def databaseds(folder: pathlib.Path) -> Iterator[str]:
    """MariaDB with the ``tango`` schema and DataBaseds serving it; yields its TANGO_HOST.

    Unavailable (nothing left running) when it can't be started here.
    """
    reason = missing()
    if reason:
        raise Unavailable(reason)
    with mariadb(folder) as (db_port, sock):
        _client(
            sock,
            "-e",
            f"CREATE DATABASE tango; CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f" GRANT ALL PRIVILEGES ON tango.* TO '{USER}'@'127.0.0.1';",
        )
        _client(sock, "tango", stdin=SCHEMA.read_bytes())
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "MYSQL_HOST": f"127.0.0.1:{db_port}",
            "MYSQL_USER": USER,
            "MYSQL_PASSWORD": PASSWORD,
            "MYSQL_DATABASE": "tango",
            "TANGO_HOST": f"127.0.0.1:{port}",
        }
        proc = subprocess.Popen(
            [str(DATABASEDS), "2", "-ORBendPoint", f"giop:tcp:127.0.0.1:{port}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_line(proc, folder / "databaseds.log", b"Ready to accept request")
            yield f"127.0.0.1:{port}"
        finally:
            _stop(proc)


@contextmanager
def pytango_db(folder: pathlib.Path) -> Iterator[str]:
    """A fresh PyDatabaseds on a free loopback port, its SQLite file and log in ``folder``;
    yields its TANGO_HOST."""
    port = free_port()
    with open(folder / "db.log", "wb") as log:
        proc = run.start_database("127.0.0.1", port, folder / "tango.sqlite", log=log)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            run.stop_process(proc)


#: The Tango databases the end-to-end tests run against: pytango-db (what ``make run`` starts)
#: and the C++ DataBaseds on MariaDB (what control rooms run).
DATABASES = ["pytango-db", "DataBaseds"]


@contextmanager
def tango_database(kind: str, folder: pathlib.Path) -> Iterator[str]:
    """A fresh Tango database of ``kind`` (one of DATABASES) on a free loopback port; yields
    its TANGO_HOST. DataBaseds where it cannot run: skipped, except in CI, where it fails."""
    if kind == "DataBaseds":
        reason = missing()
        if reason:
            if os.environ.get("CI"):  # CI installs the packages: never skip there
                pytest.fail(f"CI must run the C++ Tango database: {reason}")
            pytest.skip(f"not run on the C++ Tango database (DataBaseds on MariaDB): {reason}")
        with databaseds(folder) as tango_host:
            yield tango_host
        return
    with pytango_db(folder) as tango_host:
        yield tango_host
