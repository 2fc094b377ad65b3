"""The JSON form of what the OET returns: ProcedureSummary objects, as the Tango commands,
the ``procedureSummaries`` attribute and the REST API all give them."""

from __future__ import annotations

from typing import Any

from ska_oso_oet.procedure import strictjson
from ska_oso_oet.procedure.application import ProcedureSummary
from ska_oso_oet.procedure.scripts import ExecutableScript, GitScript


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


def to_json(value: Any) -> str:
    """Standard JSON text of summaries (or lists or dicts holding them); values a script
    passed that JSON cannot hold become repr(), non-finite numbers null
    (:func:`..strictjson.dumps`)."""
    return strictjson.dumps(value, default=_encode)


def _encode(value: Any) -> Any:
    if isinstance(value, ProcedureSummary):
        return summary_to_dict(value)
    return repr(value)
