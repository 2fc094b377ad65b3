"""Pydantic models of the JSON the OET accepts, shared by its Tango commands and its REST API.

``ProcedurePostRequest`` is the body of both the Tango ``Prepare`` command and
``POST /procedures``; ``ProcedurePutRequest`` is the body of ``PUT /procedures/{id}``. The
models are strict (an ID must be an integer, not ``"1"`` or ``true``) and refuse unknown
fields, so that a misspelt field is an error rather than silently ignored. The arguments of
a script function are standard JSON (:mod:`..strictjson`): no ``NaN`` or ``Infinity``, nested at
most ``strictjson.MAX_DEPTH`` deep, whichever way the request came.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ska_oso_oet.procedure import strictjson
from ska_oso_oet.procedure.application import PrepareProcessCommand
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
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionArgs(_Strict):
    """Positional and keyword arguments of one script function."""

    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("args", "kwargs")
    @classmethod
    def _standard_json(cls, value: Any) -> Any:
        strictjson.check(value)  # a JSONInputError is a ValueError: pydantic reports it
        return value

    def to_input(self) -> ProcedureInput:
        return ProcedureInput(*self.args, **self.kwargs)


class GitArgsModel(_Strict):
    git_repo: str = DEFAULT_GIT_REPOSITORY
    git_branch: str | None = None
    git_commit: str | None = None


class FileSystemScriptModel(_Strict):
    script_type: Literal["filesystem"]
    script_uri: str = Field(examples=["file:///abs/path/hello.py"])


class GitScriptModel(_Strict):
    script_type: Literal["git"]
    script_uri: str = Field(examples=["git://scripts/hello.py"])
    git_args: GitArgsModel = Field(default_factory=GitArgsModel)
    create_env: bool = False


ScriptModel = Annotated[FileSystemScriptModel | GitScriptModel, Field(discriminator="script_type")]


class InitArgs(_Strict):
    init: FunctionArgs = Field(default_factory=FunctionArgs)


class MainArgs(_Strict):
    main: FunctionArgs = Field(default_factory=FunctionArgs)


class ProcedurePostRequest(_Strict):
    """Prepare a procedure: the script and the arguments of its ``init``."""

    script: ScriptModel
    script_args: InitArgs = Field(default_factory=InitArgs)

    def to_command(self) -> PrepareProcessCommand:
        return PrepareProcessCommand(
            script=to_script(self.script), init_args=self.script_args.init.to_input()
        )


class ProcedurePutRequest(_Strict):
    """Change a procedure, as the reference OET's REST API does: ``state`` RUNNING starts its
    ``main`` with ``script_args.main``; STOPPED stops it (``abort``: then run the abort
    script); no ``state`` changes nothing. PAUSED pauses it at its script's next
    ``checkpoint()``; RUNNING resumes a PAUSED one (or cancels a pending pause).
    ``force_start`` (an extension) starts a procedure that is still being prepared as soon as
    it is READY."""

    state: Literal["RUNNING", "PAUSED", "STOPPED"] | None = None
    script_args: MainArgs = Field(default_factory=MainArgs)
    abort: bool = False
    force_start: bool = False


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


def describe_errors(errors: list[Any], skip: tuple[str, ...] = ()) -> str:
    """One readable line from pydantic's errors (``skip``: leading location parts to drop,
    such as FastAPI's ``body``)."""
    problems = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        while loc and loc[0] in skip:
            loc.pop(0)
        where = ".".join(loc) or "request"
        kind = err.get("type")
        if kind == "missing":
            problems.append(f"{where} is required")
        elif kind == "extra_forbidden":
            problems.append(f"{where} is not a known field")
        else:
            problems.append(f"{where}: {err.get('msg')}")
    return "; ".join(problems)


def describe(exc: ValidationError) -> str:
    return describe_errors(exc.errors())


# -- the JSON the OET returns, for the API's documentation ---------------------------------
# ui.summary makes this JSON; tests validate real responses against these models.


class HistoryModel(_Strict):
    process_states: list[tuple[str, float]] = Field(
        examples=[[["CREATING", 1764032400.123], ["IDLE", 1764032400.131]]]
    )
    stacktrace: str | None = None


class ProgressModel(_Strict):
    """The script's last ``report_progress()``."""

    fraction: float | None = Field(examples=[0.4])
    message: str = Field(examples=["slewing"])
    time: float


class SummaryModel(_Strict):
    """A ProcedureSummary, as every Tango command and REST route returns it."""

    id: int
    script: ScriptModel
    script_args: dict[str, FunctionArgs]
    history: HistoryModel
    state: str = Field(examples=["READY"])
    uri: str | None = None
    progress: ProgressModel | None = None
    result: Any = None
    pause_pending: bool = False


class StopResultModel(_Strict):
    """What ``PUT`` with state STOPPED returns."""

    abort_message: str
    abort_procedures: list[SummaryModel]


class ErrorModel(BaseModel):
    """An error: ``detail`` says what was wrong and what to do."""

    detail: str
