"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import tango
from pubsub import pub

from ska_oso_oet import run
from ska_oso_oet.procedure.application import ScriptExecutionService
from ska_oso_oet.testing import make_wheel
from tests import databases
from tests.helpers import DEVICE, REPO, Oet, Repo, client_env

# Tango servers started by the tests listen on loopback only (omniORB reads its options from
# the environment; a server forked from this process would otherwise listen on every address).
os.environ.setdefault("ORBendPoint", "giop:tcp:127.0.0.1:")
# Package installs in tests use local wheels only: never reach for an index.
os.environ.setdefault("UV_OFFLINE", "1")
os.environ.setdefault("PIP_NO_INDEX", "1")


def _patch_pytest_forked() -> None:
    """pytest-forked 1.7 cannot marshal pytest 9's report node IDs: every forked test then
    'EXITED with status 3'. Serialise the ID as the plain string it is."""
    try:
        import pytest_forked
    except ImportError:  # pragma: no cover
        return
    original = pytest_forked.serialize_report

    def serialize_report(rep: Any) -> Any:
        data = original(rep)
        if "_id" in data:
            data["nodeid"] = str(data.pop("_id"))
        return data

    pytest_forked.serialize_report = serialize_report


_patch_pytest_forked()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that talk Tango run forked: a Tango client in the test runner's own process
    would make every later forked Tango test inherit a half-copied ORB."""
    for item in items:
        if item.get_closest_marker("tango") and not item.get_closest_marker("forked"):
            item.add_marker(pytest.mark.forked)


class TopicRecorder:
    """Collects the messages of a pypubsub topic; waits for them on a condition."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        # Listening to all topics leaves each topic's message signature to its first sender.
        pub.subscribe(self._listener, pub.ALL_TOPICS)

    def _listener(self, topic: Any = pub.AUTO_TOPIC, **kwargs: Any) -> None:
        if topic.getName() != self.topic:
            return
        with self._cond:
            self.messages.append(kwargs)
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} {self.topic} messages")
            return list(self.messages)

    def close(self) -> None:
        pub.unsubscribe(self._listener, pub.ALL_TOPICS)


@pytest.fixture
def recorder() -> Iterator[Any]:
    made: list[TopicRecorder] = []

    def make(topic: str) -> TopicRecorder:
        made.append(TopicRecorder(topic))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture(autouse=True)
def _data_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices of the tests keep what lasts (history, output) in a folder of their own test,
    not the user's, so that no test sees another's procedures."""
    monkeypatch.setenv("OET_DATA_DIR", str(tmp_path_factory.mktemp("oet-data")))


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail the test if it leaves a child process of the test runner behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    after = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE
    ]
    for p in after:
        p.kill()
    assert not after, f"processes left behind: {after}"


@pytest.fixture
def make_service(no_leftover_processes: None) -> Iterator[Any]:
    """Factory for ScriptExecutionService instances, each shut down after the test."""
    services: list[ScriptExecutionService] = []

    def make(**kwargs: Any) -> ScriptExecutionService:
        kwargs.setdefault("stop_grace", 1.0)
        services.append(ScriptExecutionService(**kwargs))
        return services[-1]

    yield make
    for s in services:
        s.shutdown()
    for s in services:  # every test of a service checks the state table held
        assert s.illegal_transitions == []


@pytest.fixture
def ses(make_service: Any) -> ScriptExecutionService:
    return make_service()


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> Repo:
    """A local repository of scripts; uses_dep.py needs localdep, a wheel beside it."""
    wheel = make_wheel(tmp_path)
    return Repo(tmp_path, f"localdep @ {wheel.as_uri()}")


@pytest.fixture(scope="module", params=databases.DATABASES)
def oet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oet]:
    """A server on a fresh Tango database of each kind, registered as ``make run`` registers
    it; one per module that uses it."""
    tmp = tmp_path_factory.mktemp(f"oet-e2e-{request.param}")
    with databases.tango_database(request.param, tmp) as tango_host:
        env = client_env(tango_host)
        env["OET_DATA_DIR"] = str(tmp / "data")  # the server's history and output
        calls = run.register(run.load_config(repo=REPO), tango_host)
        assert calls, "registering into a fresh database should write something"
        host, port = run.parse_tango_host(tango_host)
        db = tango.Database(host, port)
        props = db.get_device_property(DEVICE, ["ScriptRoots", "AbortScript", "MaxRunning"])
        assert list(props["ScriptRoots"]) == [str(REPO / "scripts")]
        assert list(props["AbortScript"]) == [f"file://{REPO / 'scripts' / 'abort.py'}"]
        assert list(props["MaxRunning"]) == ["1"]
        assert run.register(run.load_config(repo=REPO), tango_host) == []  # idempotent
        server = Oet(tango_host, env, tmp / "server.log")
        try:
            server.start_server()
            yield server
        finally:
            server.stop_server()
