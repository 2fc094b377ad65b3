"""The JSON form of what the OET returns: ProcedureSummary objects, as the Tango commands,
the ``procedureSummaries`` attribute and the REST API all give them."""

from __future__ import annotations

from typing import Any

from ska_oso_oet.procedure import strictjson
from ska_oso_oet.procedure.application import ArgCapture, ProcedureHistory, ProcedureSummary
from ska_oso_oet.procedure.gitmanager import DEFAULT_GIT_REPOSITORY, GitArgs
from ska_oso_oet.procedure.scripts import (
    ExecutableScript,
    FileSystemScript,
    GitScript,
    ProcedureInput,
)
from ska_oso_oet.procedure.states import ProcedureState


def script_to_dict(script: ExecutableScript) -> dict[str, Any]:
    if isinstance(script, GitScript):
        return {
            "script_type": "git",
            "script_uri": script.script_uri,
            "git_args": {
                "git_repo": script.git_args.git_repo,
                "git_branch": script.git_args.git_branch,
                "git_commit": script.git_args.git_commit,
            },
            "create_env": script.create_env,
        }
    return {"script_type": "filesystem", "script_uri": script.script_uri}


def summary_to_dict(summary: ProcedureSummary) -> dict[str, Any]:
    """The contract's JSON shape of a ProcedureSummary."""
    script_args = {
        capture.fn: {"args": list(capture.fn_args.args), "kwargs": dict(capture.fn_args.kwargs)}
        for capture in summary.script_args
    }
    return {
        "id": summary.id,
        "script": script_to_dict(summary.script),
        "script_args": script_args,
        "history": {
            "process_states": [[s.name, t] for s, t in summary.history.process_states],
            "stacktrace": summary.history.stacktrace,
        },
        "state": summary.state.name,
        "uri": summary.uri,
        "progress": summary.progress,
        "result": summary.result,
        "pause_pending": summary.pause_pending,
    }


def script_from_dict(doc: dict[str, Any]) -> ExecutableScript:
    uri = str(doc["script_uri"])
    if doc.get("script_type") == "git":
        git = doc.get("git_args") or {}
        return GitScript(
            uri,
            git_args=GitArgs(
                git_repo=git.get("git_repo") or DEFAULT_GIT_REPOSITORY,
                git_branch=git.get("git_branch"),
                git_commit=git.get("git_commit"),
            ),
            create_env=bool(doc.get("create_env", False)),
        )
    return FileSystemScript(uri)


def summary_from_dict(doc: dict[str, Any]) -> ProcedureSummary:
    """The inverse of :func:`summary_to_dict` (the durable history reads summaries back with
    it); ValueError/KeyError/TypeError when
    ``doc`` is not a summary."""
    history = doc["history"]
    states = [(ProcedureState[str(name)], float(t)) for name, t in history["process_states"]]
    script_args = [
        ArgCapture(
            fn=str(fn),
            fn_args=ProcedureInput(*(call.get("args") or []), **(call.get("kwargs") or {})),
        )
        for fn, call in (doc.get("script_args") or {}).items()
    ]
    return ProcedureSummary(
        id=int(doc["id"]),
        script=script_from_dict(doc["script"]),
        script_args=script_args,
        history=ProcedureHistory(process_states=states, stacktrace=history.get("stacktrace")),
        state=ProcedureState[str(doc["state"])],
        uri=doc.get("uri"),
        progress=doc.get("progress"),
        result=doc.get("result"),
    )


def to_json(value: Any) -> str:
    """Standard JSON text of summaries (or lists or dicts holding them); values a script
    passed that JSON cannot hold become repr(), non-finite numbers null
    (:func:`..strictjson.dumps`)."""
    return strictjson.dumps(value, default=_encode)


def _encode(value: Any) -> Any:
    if isinstance(value, ProcedureSummary):
        return summary_to_dict(value)
    return repr(value)
