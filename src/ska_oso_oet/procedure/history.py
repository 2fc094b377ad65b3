"""History that lasts: every summary change of a device, kept in SQLite, taken back on start.

One file per device, ``history.sqlite`` in the device's data folder (``DataDirectory``), in
WAL mode. The hot path only queues the summary (:meth:`HistoryStore.put`, a few hundred
nanoseconds); a writer thread of its own serialises what has queued and commits it in one
transaction, so that a burst of changes costs one commit. A commit in WAL mode survives the
process being killed at any moment (kill -9 loses only what was still queued: the changes of
the last few milliseconds) and SQLite never leaves a half-written transaction behind.

On start (server start or ``Init``) :meth:`HistoryStore.load` gives back the ended procedures,
up to ``HistoryLength`` of them, and the next procedure ID: one above the highest ever given,
so that an ID never names two procedures. A procedure that was not final when its server
ended comes back FAILED, its stacktrace saying that the server stopped while it was in its
state. A store that cannot be read is moved aside (``history.sqlite.corrupt-<time>``), with a
log line, and the device starts with an empty history; :attr:`HistoryStore.problem` says why
until the next clean start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import queue
import sqlite3
import threading
import time

from ska_oso_oet.procedure.application import ProcedureHistory, ProcedureSummary
from ska_oso_oet.procedure.states import ProcedureState
from ska_oso_oet.procedure.ui.summary import summary_from_dict, to_json

LOGGER = logging.getLogger(__name__)

FILE_NAME = "history.sqlite"
RETRY_AFTER = 1.0  # seconds before a failed commit is tried again
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY,
    final INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class _Stop:
    """The writer's last item."""


def _damaged(exc: BaseException) -> bool:
    """Whether opening failed because the file is damaged or not a database at all: only then
    is it moved aside. A lock held elsewhere, too many open files, a full or read-only disk
    or a permission refused say nothing about the file."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


@dataclasses.dataclass
class Loaded:
    """What a start takes back from the store."""

    summaries: list[ProcedureSummary]  # ended procedures (the lost ones now FAILED), by ID
    next_id: int  # one above every ID ever given
    lost: list[int]  # procedures that were live when their server ended: now FAILED


def lost(summary: ProcedureSummary, when: float) -> ProcedureSummary:
    """``summary`` of a procedure that was live when its server ended, as FAILED now."""
    was = summary.state.name
    history = ProcedureHistory(
        process_states=[*summary.history.process_states, (ProcedureState.FAILED, when)],
        stacktrace=(
            f"The OET server stopped while this procedure was {was}: its process ended with "
            "the server (a restart, a crash or a kill), so it did not finish.\n"
            f"ServerStopped: the server stopped while the procedure was {was}"
        ),
    )
    return dataclasses.replace(summary, state=ProcedureState.FAILED, history=history)


class HistoryStore:
    """The durable history of one device (see the module's doc)."""

    def __init__(
        self, folder: pathlib.Path | str, history_limit: int, busy_timeout: float = 5.0
    ) -> None:
        self.path = pathlib.Path(folder) / FILE_NAME
        self.history_limit = history_limit
        self.busy_timeout = busy_timeout  # seconds to wait for a lock another process holds
        #: why the store is not what it should be (moved aside, unwritable), else None
        self.problem: str | None = None
        self._queue: queue.SimpleQueue[ProcedureSummary | int | threading.Event | _Stop] = (
            queue.SimpleQueue()
        )
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._next_id = 1
        self._next_id_written = 0
        self._open()

    # -- opening, and what to do when the file is bad ------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, check_same_thread=False, isolation_level=None
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses no commit
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {row[0]}, not {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> None:
        try:
            self._db = self._connect()
            return
        except (sqlite3.Error, OSError) as exc:
            first = exc
        if not _damaged(first):
            # not damaged: in use elsewhere, no descriptor left, a disk full or read-only...;
            # leave the file alone and keep this run's history in memory only
            self.problem = (
                f"the history store {self.path} cannot be opened ({first}); the file is left "
                "as it is and this device keeps its history in memory only until its next start"
            )
            LOGGER.error("%s", self.problem)
            return
        aside = self._move_aside()
        if aside is None:
            self.problem = (
                f"the history store {self.path} cannot be used ({first}); the history is "
                "kept in memory only"
            )
            LOGGER.error("%s", self.problem)
            return
        self.problem = (
            f"the history store {self.path} could not be read ({first}); it was moved to "
            f"{aside} and the device started with an empty history"
        )
        LOGGER.error("%s", self.problem)
        try:
            self._db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self.problem += f"; a new store cannot be made either ({exc})"
            LOGGER.error("History store %s: a new one cannot be made: %s", self.path, exc)

    def _move_aside(self) -> pathlib.Path | None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            if not self.path.exists():
                return None
            for suffix in ("", "-wal", "-shm"):
                part = self.path.with_name(self.path.name + suffix)
                if part.exists():
                    part.rename(aside.with_name(aside.name + suffix))
        except OSError as exc:
            LOGGER.error("History store %s cannot be moved aside: %s", self.path, exc)
            return None
        return aside

    # -- start ---------------------------------------------------------------------------------

    def load(self) -> Loaded:
        """The ended procedures to show again (the lost ones marked FAILED, and written so),
        newest ``history_limit`` of them, and the next ID. Starts the writer."""
        summaries: list[ProcedureSummary] = []
        were_live: list[ProcedureSummary] = []  # marked FAILED here, to be written so
        next_id = 1
        if self._db is not None:
            try:
                rows = self._db.execute("SELECT id, final, summary FROM summaries ORDER BY id")
                for pid, final, text in rows.fetchall():
                    next_id = max(next_id, int(pid) + 1)
                    try:
                        summary = summary_from_dict(json.loads(text))
                    except (ValueError, KeyError, TypeError) as exc:
                        LOGGER.error(
                            "History store: procedure %s unreadable, skipped: %s", pid, exc
                        )
                        continue
                    if not final or not summary.state.is_final:
                        summary = lost(summary, time.time())
                        were_live.append(summary)
                    summaries.append(summary)
                row = self._db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
                if row is not None:
                    next_id = max(next_id, int(row[0]))
            except sqlite3.Error as exc:
                self.problem = f"the history store {self.path} could not be read ({exc})"
                LOGGER.error("%s", self.problem)
                summaries, were_live = [], []
        keep = summaries[-self.history_limit :] if self.history_limit else []
        next_id = max(next_id, self._read_next_id())  # also after a store was moved aside
        self._next_id = next_id
        self._thread = threading.Thread(target=self._write_loop, name="oet-history", daemon=True)
        self._thread.start()
        for summary in were_live:
            self.put(summary)  # FAILED from now on, for whoever looks next
        self.put_next_id(next_id)
        lost_ids = [summary.id for summary in were_live]
        if lost_ids:
            LOGGER.warning(
                "Procedures %s were live when the server stopped: shown FAILED",
                ", ".join(map(str, lost_ids)),
            )
        return Loaded(keep, next_id, lost_ids)

    # -- the hot path --------------------------------------------------------------------------

    def put(self, summary: ProcedureSummary) -> None:
        """Keep this summary (queued: written within milliseconds by the writer thread)."""
        self._queue.put(summary)

    def put_next_id(self, next_id: int) -> None:
        """Remember that IDs below ``next_id`` have been given."""
        self._queue.put(next_id)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed; False if that took too long."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_Stop())
            self._thread.join(timeout)
        if self._db is not None and (self._thread is None or not self._thread.is_alive()):
            self._db.close()
            self._db = None

    # -- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        unwritten: dict[int, ProcedureSummary] = {}  # a failed commit's, tried again
        while True:
            try:  # with something unwritten, try again within a second even if all is quiet
                items = [self._queue.get(timeout=RETRY_AFTER if unwritten else None)]
            except queue.Empty:
                items = []
            while True:  # what else has queued meanwhile: one transaction for all of it
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            latest = dict(unwritten)
            next_id = self._next_id
            waiting: list[threading.Event] = []
            stop = False
            for item in items:
                if isinstance(item, ProcedureSummary):
                    latest[item.id] = item
                    next_id = max(next_id, item.id + 1)
                elif isinstance(item, int):
                    next_id = max(next_id, item)
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    stop = True
            try:
                rows = [(pid, int(s.state.is_final), to_json(s)) for pid, s in latest.items()]
                self._commit(rows, next_id, prune=any(s.state.is_final for s in latest.values()))
                self._next_id = next_id
                unwritten = {}
            except Exception as exc:  # a full disk, a lock held elsewhere: go on, and say so
                unwritten = latest
                if self.problem is None:
                    self.problem = f"the history store {self.path} cannot be written ({exc})"
                LOGGER.error(
                    "History store %s: writing failed, will try again: %s", self.path, exc
                )
            for event in waiting:
                event.set()
            if stop:
                return

    @property
    def _next_id_file(self) -> pathlib.Path:
        """Beside the store, the next ID alone: it outlives a store moved aside."""
        return self.path.with_name("next_id")

    def _read_next_id(self) -> int:
        try:
            return max(1, int(self._next_id_file.read_text().strip()))
        except (OSError, ValueError):
            return 1

    def _write_next_id(self, next_id: int) -> None:
        if next_id <= self._next_id_written:
            return
        tmp = self._next_id_file.with_name("next_id.tmp")
        try:
            tmp.write_text(f"{next_id}\n")
            tmp.replace(self._next_id_file)  # whole or not at all
            self._next_id_written = next_id
        except OSError as exc:
            LOGGER.error("History store %s: the next ID cannot be kept: %s", self.path, exc)

    def _commit(self, rows: list[tuple[int, int, str]], next_id: int, prune: bool) -> None:
        self._write_next_id(next_id)
        db = self._db
        if db is None:
            return
        with db:  # one transaction
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (next_id,))
            if prune:
                db.execute(
                    "DELETE FROM summaries WHERE final = 1 AND id NOT IN "
                    "(SELECT id FROM summaries WHERE final = 1 ORDER BY id DESC LIMIT ?)",
                    (self.history_limit,),
                )
