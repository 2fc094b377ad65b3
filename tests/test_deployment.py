"""Deployment: tango-db/, the Dockerfile, the Helm chart and docs/deployment.md agree.

What can be checked on a machine without Docker or Kubernetes:

- ``tango-db/oet.json`` loads into a real pytango-db (PyDatabaseds on a free 127.0.0.1 port)
  with dsconfig, and reads back, for ``make run`` and for the chart.
- The chart's values and templates parse; every ``.Values`` path a template uses exists; the
  device configuration the chart generates from its ``deviceServers`` values equals
  ``tango-db/oet.json`` (with ``@REPO@`` = the image's ``/app``), for 1 and for N subarrays.
- The chart's job script (json2tango) and init-container script run against that database, and
  a device server started the way the chart starts it (fixed ORB and ZMQ ports, a published
  name) answers the health check the Dockerfile and the chart's readiness probe run.
- The Dockerfile's base, user, entry point, command and health check are what the docs say.
- Where a ``helm`` binary is on PATH (or in ``$HELM``), ``helm lint`` and ``helm template`` are
  run and the rendered manifests are checked too; otherwise that test is skipped.

Every process the tests start listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import pathlib
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import tango
import yaml

from ska_oso_oet import __version__, run
from tests import databases
from tests.helpers import free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "ska-oso-oet"
DOCKERFILE = REPO / "Dockerfile"
DOCS = REPO / "docs" / "deployment.md"
BIN = pathlib.Path(sys.executable).parent
TIMEOUT = 60.0


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# -- the Dockerfile ----------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        instructions.append((word.upper(), " ".join(rest.split())))
        buf = ""
    assert not buf, "the Dockerfile ends in a continuation line"
    return instructions


def instruction(name: str) -> str:
    """The arguments of the last ``name`` instruction (the one that takes effect)."""
    found = [args for word, args in dockerfile() if word == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in dockerfile():
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_repo() -> str:
    """The directory that plays ``@REPO@`` in the image: the WORKDIR holding tango-db/."""
    workdir = instruction("WORKDIR")
    copies = [args.split() for word, args in dockerfile() if word == "COPY"]
    assert ["tango-db", f"{workdir}/tango-db"] in copies
    assert ["scripts", f"{workdir}/scripts"] in copies
    return workdir


def image_config(devices: int) -> dict[str, Any]:
    """tango-db/oet.json as the image sees it: ``@REPO@`` is the image's /app."""
    return run.load_config(REPO / "tango-db" / "oet.json", repo=image_repo(), devices=devices)


def healthcheck() -> tuple[str, list[str]]:
    """(options, the CMD exec-form list) of HEALTHCHECK."""
    options, sep, cmd = instruction("HEALTHCHECK").partition(" CMD ")
    assert sep, "HEALTHCHECK must use CMD"
    return options, json.loads(cmd)


def test_dockerfile_is_what_the_docs_say() -> None:
    docs = " ".join(DOCS.read_text().split())
    assert instruction("FROM") == "python:3.11-slim"
    assert json.loads(instruction("ENTRYPOINT")) == ["tini", "--", "ObservationExecutionTool"]
    assert json.loads(instruction("CMD")) == ["1"]
    assert instruction("USER") == "1000:1000"
    options, check = healthcheck()
    assert "--timeout=" in options and "--start-period=" in options
    assert check[:2] == ["python", "-c"] and "DeviceProxy(" in check[2] and ".ping()" in check[2]
    for word in ("USER", "ENTRYPOINT", "CMD", "HEALTHCHECK"):
        line = f"{word} {instruction(word)}"
        assert line in docs, f"docs/deployment.md should show `{line}`"
    # the user: oet, uid and gid 1000, whose home holds the caches
    run_lines = " ".join(args for word, args in dockerfile() if word == "RUN")
    assert "useradd --uid 1000 --gid 1000 --home-dir /var/lib/oet" in run_lines
    assert re.search(r"apt-get install [^&]*\bgit\b", run_lines)
    assert re.search(r"apt-get install [^&]*\btini\b", run_lines)
    assert "pip install /tmp/oet-src " in run_lines and "[" not in run_lines.split("pip")[1]
    assert image_env()["HOME"] == "/var/lib/oet"
    assert image_env()["OET_DEVICE"] == "oet/executor/1"
    assert json.loads(instruction("VOLUME")) == ["/var/lib/oet/.cache", "/var/lib/oet/data"]
    assert image_env()["OET_DATA_DIR"] == "/var/lib/oet/data"
    assert "`oet` (uid 1000, gid 1000)" in docs


def test_the_rest_port_agrees_in_the_image_the_chart_make_run_and_the_docs() -> None:
    """One REST port: the image EXPOSEs it, the chart's rest.port (off unless rest.enabled)
    and make run (device 1) use it, and docs/deployment.md says so."""
    docs = " ".join(DOCS.read_text().split())
    rest = values()["rest"]
    assert rest == {"enabled": False, "port": run.DEFAULT_REST_PORT}
    assert instruction("EXPOSE") == str(run.DEFAULT_REST_PORT)
    assert f"EXPOSE {run.DEFAULT_REST_PORT}" in docs
    assert "rest.enabled" in docs and "OET_REST_PORT" in docs and "OET_REST_HOST" in docs
    # make run: device k on port + k - 1, and 0 turns REST off
    env = {"OET_REST_PORT": "6000"}
    assert run.rest_port_base(env) == 6000 and run.rest_port_base({}) == run.DEFAULT_REST_PORT
    assert run.rest_env(env, 6000, 3)["OET_REST_PORT"] == "6002"
    assert run.rest_env({}, 0, 3)["OET_REST_PORT"] == "0"
    assert run.rest_url(run.rest_env({}, 6000, 1)) == "http://127.0.0.1:6000/oet/api/v7"
    assert run.rest_url(run.rest_env({}, 0, 1)) is None
    with pytest.raises(ValueError, match="OET_REST_PORT"):
        run.rest_port_base({"OET_REST_PORT": "http"})


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include what the image needs"
    included = {line[1:] for line in lines if line.startswith("!")}
    sources = set()
    for word, args in dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            sources.update(args.split()[:-1])
    assert sources == included, "the context holds exactly what the Dockerfile copies"
    for needed in sources:
        assert (REPO / needed).exists(), needed
    assert "README.md" in included  # setup.cfg's long_description reads it


# -- the chart, without helm -------------------------------------------------------------------

ACTION = re.compile(r"{{-?(.*?)-?}}", re.S)
BLOCKS = ("if", "range", "with", "define", "block")


def templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def lookup(tree: Any, path: list[str]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def test_chart_values_and_templates_parse() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "ska-oso-oet"
    assert chart["appVersion"] == __version__
    vals = values()
    defined: set[str] = set()
    used: set[str] = set()
    for name, text in templates().items():
        assert text.count("{{") == text.count("}}"), name
        stack: list[str] = []
        for action in ACTION.findall(text):
            action = action.strip()
            if action.startswith("/*"):
                assert action.endswith("*/"), f"{name}: unterminated comment"
                continue
            word = action.split()[0] if action.split() else ""
            if word in BLOCKS:
                stack.append(word)
            elif word == "end":
                assert stack, f"{name}: `end` without a block"
                stack.pop()
            elif word == "else":
                assert stack and stack[-1] in ("if", "range", "with"), f"{name}: stray else"
            if word == "define":
                defined.add(json.loads(action.split()[1]))
            used.update(
                json.loads(m) for m in re.findall(r'(?:include|template) ("[^"]+")', action)
            )
            for path in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", action):
                assert lookup(vals, path.split(".")[1:]), f"{name}: .Values{path} is not set"
            for path in re.findall(r'\.Files\.Get "([^"]+)"', action):
                assert (CHART / path).is_file(), f"{name}: {path} is not in the chart"
        assert not stack, f"{name}: {stack} not closed"
        if name.endswith(".yaml"):  # what is outside the actions is YAML-shaped
            assert not text.lstrip().startswith("\t")
    assert used <= defined, f"templates used but not defined: {used - defined}"


def chart_dsconfig(vals: dict[str, Any], subarrays: int | None = None) -> dict[str, Any]:
    """The dsconfig JSON the chart's "oet.dsconfig" template makes (the same rules, in Python)."""
    server = vals["deviceServers"]["oet"]["server"]
    count = vals["subarrays"] if subarrays is None else subarrays
    listed = {str(i["name"]): i for i in server["instances"]}

    def props(device: dict[str, Any]) -> dict[str, list[str]]:
        return {p["name"]: [str(v) for v in p.get("values") or []] for p in device["properties"]}

    instances: dict[str, Any] = {}
    for n in map(str, range(1, count + 1)):
        if n in listed:
            instances[n] = {
                c["name"]: {d["name"]: {"properties": props(d)} for d in c["devices"]}
                for c in listed[n]["classes"]
            }
        else:
            instances[n] = {
                c["name"]: {
                    f"{posixpath.dirname(c['devices'][0]['name'])}/{n}": {
                        "properties": props(c["devices"][0])
                    }
                }
                for c in listed["1"]["classes"]
            }
    return {"servers": {server["name"]: instances}}


@pytest.mark.parametrize("subarrays", [1, 4])
def test_chart_device_configuration_equals_tango_db(subarrays: int) -> None:
    vals = values()
    assert vals["subarrays"] == 1
    oet = vals["deviceServers"]["oet"]
    assert oet["command"] == oet["server"]["name"] == run.SERVER
    for instance in oet["server"]["instances"]:
        for cls in instance["classes"]:
            for device in cls["devices"]:
                for prop in device["properties"]:
                    assert all(isinstance(v, str) for v in prop["values"]), (
                        f"{prop['name']}: quote every value (Tango properties are strings)"
                    )
    expected = image_config(subarrays)
    assert chart_dsconfig(vals, subarrays) == expected
    names = [n for ns in run.device_names(expected).values() for n in ns]
    assert names == [f"oet/executor/{n}" for n in range(1, subarrays + 1)]


def test_chart_volumes_match_the_image_and_the_properties() -> None:
    vals = values()
    props = chart_dsconfig(vals)["servers"][run.SERVER]["1"][run.SERVER]["oet/executor/1"]
    roots = props["properties"]["ScriptRoots"]
    abort = props["properties"]["AbortScript"][0]
    assert vals["scripts"]["mountPath"] in roots
    assert abort.startswith(f"file://{vals['scripts']['mountPath']}/")
    # the device's default cache (~/.cache/ska-oso-oet) lies in the cache volume
    assert vals["cache"]["mountPath"] == f"{image_env()['HOME']}/.cache"
    # the history and output (DataDirectory: $OET_DATA_DIR) lie in the data volume
    assert vals["data"]["mountPath"] == image_env()["OET_DATA_DIR"]
    assert vals["data"]["persistent"] is True  # the history outlives the pod
    assert json.loads(instruction("VOLUME")) == [
        vals["cache"]["mountPath"],
        vals["data"]["mountPath"],
    ]
    user, group = instruction("USER").split(":")
    sec = vals["podSecurityContext"]
    assert (str(sec["runAsUser"]), str(sec["runAsGroup"]), sec["runAsNonRoot"]) == (
        user,
        group,
        True,
    )
    statefulset = (CHART / "templates" / "statefulset.yaml").read_text()
    assert json.dumps(healthcheck()[1][2]) in statefulset, "readiness probe = HEALTHCHECK"


# -- a real Tango database ---------------------------------------------------------------------


@pytest.fixture
def tango_db(tmp_path: pathlib.Path) -> Iterator[str]:
    """A fresh PyDatabaseds on a free 127.0.0.1 port: yields its TANGO_HOST."""
    with databases.pytango_db(tmp_path) as tango_host:
        yield tango_host


def read_back(tango_host: str, config: dict[str, Any]) -> dict[str, Any]:
    """The database's view of every server, instance, class and device in ``config``."""
    host, port = run.parse_tango_host(tango_host)
    db = tango.Database(host, port)
    got: dict[str, Any] = {}
    for server, instances in config["servers"].items():
        for instance, classes in instances.items():
            listed = list(db.get_device_class_list(f"{server}/{instance}").value_string)
            pairs = dict(zip(listed[::2], listed[1::2], strict=True))
            for cls, devices in classes.items():
                for name, device in devices.items():
                    assert pairs.get(name) == cls, f"{name} is not a {cls} of {server}/{instance}"
                    wanted = list(device["properties"])
                    props = db.get_device_property(name, wanted)
                    got.setdefault(server, {}).setdefault(instance, {}).setdefault(cls, {})[
                        name
                    ] = {"properties": {k: list(props[k]) for k in wanted}}
    return {"servers": got}


@pytest.mark.tango
def test_tango_db_loads_into_pytango_db(tango_db: str) -> None:
    config = run.load_config(repo=REPO, devices=3)
    assert run.register(config, tango_db), "a fresh database must be written to"
    assert read_back(tango_db, config) == config
    props = config["servers"][run.SERVER]["3"][run.SERVER]["oet/executor/3"]["properties"]
    assert props["ScriptRoots"] == [str(REPO / "scripts")]
    assert props["AbortScript"] == [f"file://{REPO}/scripts/abort.py"]
    assert run.register(config, tango_db) == []  # idempotent
    # emptying a list in tango-db/ (say, to revoke git scripts) removes it from the database
    host, port = run.parse_tango_host(tango_db)
    db = tango.Database(host, port)
    db.put_device_property("oet/executor/2", {"AllowedGitRepositories": ["file:///x/*"]})
    assert run.register(config, tango_db) == [
        ("delete_device_property", ("oet/executor/2", ["AllowedGitRepositories"]), {})
    ]
    assert read_back(tango_db, config) == config


def script_env(tango_host: str) -> dict[str, str]:
    env = run.child_env(tango_host)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.tango
def test_chart_job_and_init_container_scripts(tango_db: str, tmp_path: pathlib.Path) -> None:
    """The dsconfig job's script writes the chart's configuration; the init container's script
    waits for it (and says what is missing until then)."""
    config = chart_dsconfig(values(), subarrays=3)
    path = tmp_path / "oet.json"
    path.write_text(json.dumps(config))
    env = script_env(tango_db)

    def wait_for(instance: str, timeout: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(CHART / "files" / "wait_for_device.py"), str(path)]
        return subprocess.run(
            [*cmd, instance, timeout], env=env, capture_output=True, text=True, timeout=TIMEOUT
        )

    before = wait_for("2", "0.5")
    assert before.returncode == 1 and "oet/executor/2" in before.stderr, before

    def job() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(CHART / "files" / "dsconfig.sh"), str(path)],
            env={**env, "DSCONFIG_TIMEOUT": "30", "TMPDIR": str(tmp_path)},  # its backups
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    first = job()
    assert first.returncode == 0 and "configuration written" in first.stdout, first
    again = job()
    assert again.returncode == 0 and "already had this configuration" in again.stdout, again
    assert read_back(tango_db, config) == config
    for instance in ("1", "2", "3"):
        done = wait_for(instance, "10")
        assert done.returncode == 0, done

    # a property that differs (an upgrade whose job has not run yet) keeps the pod waiting
    host, port = run.parse_tango_host(tango_db)
    tango.Database(host, port).put_device_property("oet/executor/3", {"MaxRunning": ["7"]})
    stale = wait_for("3", "0.5")
    assert stale.returncode == 1 and "MaxRunning" in stale.stderr, stale

    # a list the configuration empties is removed from the database, not left as it was
    allowed = "AllowedGitRepositories"
    assert (
        config["servers"][run.SERVER]["3"][run.SERVER]["oet/executor/3"]["properties"][allowed]
        == []
    )
    tango.Database(host, port).put_device_property("oet/executor/3", {allowed: ["file:///x/*"]})
    revoked = job()
    assert revoked.returncode == 0 and f"removed oet/executor/3/{allowed}" in revoked.stdout
    assert (
        list(tango.Database(host, port).get_device_property("oet/executor/3", [allowed])[allowed])
        == []
    )
    assert wait_for("3", "10").returncode == 0


def listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.mark.tango
def test_server_started_as_the_chart_starts_it_passes_the_health_check(
    tango_db: str, tmp_path: pathlib.Path
) -> None:
    """Instance 2 with a fixed ORB port, a published host name and fixed ZMQ event ports (the
    chart's args and env, on loopback); the Dockerfile's HEALTHCHECK passes for the device it
    serves and fails for a registered device that nobody serves."""
    run.register(run.load_config(repo=REPO, devices=2), tango_db)
    orb, event, heartbeat = free_port(), free_port(), free_port()
    env = script_env(tango_db)
    env.pop("ORBendPoint", None)  # the command line says where to listen, as in the chart
    env.update(
        TANGO_ZMQ_EVENT_PORT=str(event),
        TANGO_ZMQ_HEARTBEAT_PORT=str(heartbeat),
        OET_DEVICE="oet/executor/2",
    )
    # the chart's REST settings, on loopback here (the chart listens on 0.0.0.0)
    rest_port = free_port()
    env.update(OET_REST_PORT=str(rest_port), OET_REST_HOST="127.0.0.1")
    args = ["-ORBendPoint", f"giop:tcp:127.0.0.1:{orb}", "-ORBendPointPublish"]
    args.append(f"giop:tcp:localhost:{orb}")
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(BIN / run.SERVER), "2", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        try:
            run.wait_for_device("oet/executor/2", TIMEOUT, tango_host=tango_db, proc=server)
            # the event socket is bound at the first subscription: subscribe, as a client does
            proxy = tango.DeviceProxy(run.device_trl("oet/executor/2", tango_db))
            got: list[Any] = []
            sub = proxy.subscribe_event(
                "procedureSummaries", tango.EventType.CHANGE_EVENT, got.append
            )
            assert got and not got[0].err
            proxy.unsubscribe_event(sub)
            ports = listening(server.pid)
            assert {("127.0.0.1", orb), ("127.0.0.1", event), ("127.0.0.1", heartbeat)} <= ports
            assert ("127.0.0.1", rest_port) in ports
            assert all(ip == "127.0.0.1" for ip, _ in ports), ports
            rest_url = f"http://127.0.0.1:{rest_port}/oet/api/v7"
            assert run.rest_answers(rest_url, "oet/executor/2")

            check = [sys.executable, *healthcheck()[1][1:]]
            ok = subprocess.run(check, env=env, capture_output=True, text=True, timeout=TIMEOUT)
            assert ok.returncode == 0, ok.stderr
            env["OET_DEVICE"] = "oet/executor/1"  # registered, not served
            bad = subprocess.run(check, env=env, capture_output=True, text=True, timeout=TIMEOUT)
            assert bad.returncode != 0
        finally:
            run.stop_process(server)


# -- the chart, rendered by helm ---------------------------------------------------------------


def helm() -> str | None:
    beside = pathlib.Path(sys.executable).parent / "helm"  # where `make test` puts it
    return os.environ.get("HELM") or (str(beside) if beside.exists() else shutil.which("helm"))


@pytest.mark.skipif(helm() is None, reason="no helm binary on PATH (or in $HELM)")
def test_helm_renders_the_chart(tmp_path: pathlib.Path) -> None:
    binary = str(helm())
    lint = subprocess.run(
        [binary, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    overrides = tmp_path / "values.yaml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "subarrays": 3,
                "tango_host": "tango-db.{{ .Release.Namespace }}:10000",
                "image": {"registry": "registry.example", "tag": "9.9.9"},
                "rest": {"enabled": True, "port": 5100},
            }
        )
    )
    rendered = subprocess.run(
        [binary, "template", "rel", str(CHART), "-n", "oso", "-f", str(overrides)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == sorted(["ConfigMap", "Job"] + ["Service", "StatefulSet"] * 3)

    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    dsconfig = json.loads(configmap["data"]["oet.json"])
    assert dsconfig == image_config(3)
    assert dsconfig == chart_dsconfig(values(), 3)
    for name in ("dsconfig.sh", "wait_for_device.py"):
        text = (CHART / "files" / name).read_text()
        assert configmap["data"][name].strip() == text.strip()

    (job,) = [d for d in docs if d["kind"] == "Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["sh", "/etc/oet/dsconfig.sh", "/etc/oet/oet.json"]
    assert {"name": "TANGO_HOST", "value": "tango-db.oso:10000"} in container["env"]

    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    _, check = healthcheck()
    for n, sset in enumerate(sets, start=1):
        assert sset["metadata"]["name"] == f"rel-ska-oso-oet-{n}"
        assert sset["spec"]["replicas"] == 1
        pod = sset["spec"]["template"]["spec"]
        (oet,) = pod["containers"]
        assert oet["image"] == "registry.example/ska-oso-oet:9.9.9"
        assert "command" not in oet, "the image's ENTRYPOINT starts the server"
        assert oet["args"][0] == str(n)
        assert oet["args"][1:4:2] == ["-ORBendPoint", "-ORBendPointPublish"]
        assert f"rel-ska-oso-oet-{n}.$(POD_NAMESPACE).svc.cluster.local" in oet["args"][4]
        env = {e["name"]: e.get("value") for e in oet["env"]}
        assert env["TANGO_HOST"] == "tango-db.oso:10000"
        assert env["OET_DEVICE"] == f"oet/executor/{n}"
        assert (env["OET_REST_PORT"], env["OET_REST_HOST"]) == ("5100", "0.0.0.0")
        assert {"name": "rest", "containerPort": 5100} in oet["ports"]
        assert oet["readinessProbe"]["exec"]["command"] == check
        assert oet["livenessProbe"]["tcpSocket"]["port"] == "tango-server"
        assert oet["resources"] == values()["resources"]
        mounts = {m["name"]: m["mountPath"] for m in oet["volumeMounts"]}
        assert mounts == {
            "cache": f"{image_env()['HOME']}/.cache",
            "data": image_env()["OET_DATA_DIR"],
        }
        assert env["OET_DATA_DIR"] == image_env()["OET_DATA_DIR"]
        claims = {c["metadata"]["name"]: c for c in sset["spec"].get("volumeClaimTemplates", [])}
        assert sorted(claims) == ["data"]  # the cache is an emptyDir unless asked for
        assert claims["data"]["spec"]["resources"]["requests"]["storage"] == "1Gi"
        assert pod["securityContext"]["runAsUser"] == 1000
        (init,) = pod["initContainers"]
        assert init["command"][1:4] == ["/etc/oet/wait_for_device.py", "/etc/oet/oet.json", str(n)]
    for service in [d for d in docs if d["kind"] == "Service"]:
        assert {"name": "rest", "port": 5100, "targetPort": "rest"} in service["spec"]["ports"]

    # by default the REST API is off: no Service port, no container port, no environment
    plain = subprocess.run(
        [binary, "template", "rel", str(CHART), "-n", "oso"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode == 0, plain.stderr
    rendered_plain = [d for d in yaml.safe_load_all(plain.stdout) if d]
    assert "rest" not in plain.stdout.replace("restart", "")
    for d in rendered_plain:
        if d["kind"] == "StatefulSet":
            (oet,) = d["spec"]["template"]["spec"]["containers"]
            assert not {"OET_REST_PORT", "OET_REST_HOST"} & {e["name"] for e in oet["env"]}
