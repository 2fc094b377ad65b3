"""The procedure UI layer: pydantic models of the JSON requests that the OET accepts, and the
JSON form of what it returns.

The Tango device and the ``oet`` command line both use these, so a request means the same
thing whichever way it arrives. Every parser raises :class:`RequestError` with a message a
person can act on.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    ProcedureSummary,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.gitmanager import DEFAULT_GIT_REPOSITORY, GitArgs
from ska_oso_oet.procedure.scripts import (
    ExecutableScript,
    FileSystemScript,
    GitScript,
    ProcedureInput,
)


class RequestError(ValueError):
    """A request was malformed; the message says what to change."""


class _Strict(BaseModel):
    # strict: an ID must be an integer (not true, "1" or 1.0), a flag a boolean
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionArgs(_Strict):
    """Positional and keyword arguments of one script function."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def to_input(self) -> ProcedureInput:
        return ProcedureInput(*self.args, **self.kwargs)


class GitArgsModel(_Strict):
    git_repo: str = DEFAULT_GIT_REPOSITORY
    git_branch: str | None = None
    git_commit: str | None = None


class FileSystemScriptModel(_Strict):
    script_type: Literal["filesystem"]
    script_uri: str


class GitScriptModel(_Strict):
    script_type: Literal["git"]
    script_uri: str
    git_args: GitArgsModel = Field(default_factory=GitArgsModel)
    create_env: bool = False


ScriptModel = Annotated[FileSystemScriptModel | GitScriptModel, Field(discriminator="script_type")]


class InitArgs(_Strict):
    init: FunctionArgs = Field(default_factory=FunctionArgs)


class ProcedurePostRequest(_Strict):
    """Prepare a procedure: the script and the arguments of its ``init``."""

    script: ScriptModel
    script_args: InitArgs = Field(default_factory=InitArgs)

    def to_command(self) -> PrepareProcessCommand:
        return PrepareProcessCommand(
            script=to_script(self.script), init_args=self.script_args.init.to_input()
        )


class StartRequest(_Strict):
    """Start a function of a prepared procedure."""

    id: int
    fn_name: str = "main"
    run_args: FunctionArgs = Field(default_factory=FunctionArgs)
    force_start: bool = False

    def to_command(self) -> StartProcessCommand:
        return StartProcessCommand(
            self.id, self.fn_name, self.run_args.to_input(), force_start=self.force_start
        )


class StopRequest(_Strict):
    """Stop a procedure, optionally running the abort script afterwards."""

    id: int
    run_abort: bool = False

    def to_command(self) -> StopProcessCommand:
        return StopProcessCommand(self.id, self.run_abort)


class ProcedurePutRequest(_Strict):
    """Change the state of a procedure, REST style: RUNNING starts it, STOPPED stops it."""

    id: int
    state: Literal["RUNNING", "STOPPED"]
    fn_name: str = "main"
    run_args: FunctionArgs = Field(default_factory=FunctionArgs)
    force_start: bool = False
    abort: bool = False

    def to_command(self) -> StartProcessCommand | StopProcessCommand:
        if self.state == "RUNNING":
            return StartProcessCommand(
                self.id, self.fn_name, self.run_args.to_input(), force_start=self.force_start
            )
        return StopProcessCommand(self.id, self.abort)


def to_script(model: FileSystemScriptModel | GitScriptModel) -> ExecutableScript:
    try:
        if isinstance(model, GitScriptModel):
            return GitScript(
                model.script_uri,
                git_args=GitArgs(**model.git_args.model_dump()),
                create_env=model.create_env,
            )
        return FileSystemScript(model.script_uri)
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "request"
        if err["type"] == "missing":
            problems.append(f"{where} is required")
        elif err["type"] == "extra_forbidden":
            problems.append(f"{where} is not a known field")
        else:
            problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems)


def _parse(model: type[_Strict], text: str, example: str) -> Any:
    try:
        json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise RequestError(
            f"The request is not valid JSON ({exc}); expected e.g. {example}"
        ) from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise RequestError(f"Invalid request: {_describe(exc)}; expected e.g. {example}") from None


PREPARE_EXAMPLE = (
    '{"script": {"script_type": "filesystem", "script_uri": "file:///abs/script.py"}, '
    '"script_args": {"init": {"args": [], "kwargs": {}}}}'
)
START_EXAMPLE = '{"id": 1, "fn_name": "main", "run_args": {"args": [], "kwargs": {}}}'
STOP_EXAMPLE = '{"id": 1, "run_abort": false}'


def parse_prepare(text: str) -> PrepareProcessCommand:
    request: ProcedurePostRequest = _parse(ProcedurePostRequest, text, PREPARE_EXAMPLE)
    return request.to_command()


def parse_start(text: str) -> StartProcessCommand:
    request: StartRequest = _parse(StartRequest, text, START_EXAMPLE)
    return request.to_command()


def parse_stop(text: str) -> StopProcessCommand:
    request: StopRequest = _parse(StopRequest, text, STOP_EXAMPLE)
    return request.to_command()


def parse_ids(text: str) -> list[int] | None:
    """The argument of Summarise: a JSON list of IDs, or ``""``/``[]`` for every procedure."""
    if text is None or not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"Expected a JSON list of procedure IDs, e.g. [1, 2] ({exc})") from None
    if data == "":
        return None  # the JSON text "" means every procedure, as an empty argument does
    if isinstance(data, int) and not isinstance(data, bool):
        data = [data]
    if not isinstance(data, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in data
    ):
        raise RequestError("Expected a JSON list of procedure IDs, e.g. [1, 2]")
    return data or None


# -- output ---------------------------------------------------------------------------------


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
    }


def to_json(value: Any) -> str:
    """JSON text of summaries; values a script passed that JSON cannot hold become repr()."""
    if isinstance(value, ProcedureSummary):
        value = summary_to_dict(value)
    elif isinstance(value, list):
        value = [summary_to_dict(v) if isinstance(v, ProcedureSummary) else v for v in value]
    return json.dumps(value, default=repr)
