"""The JSON arguments of the Tango device's commands, parsed into the service's commands.

Every parser raises :class:`~ska_oso_oet.procedure.ui.models.RequestError` with a message a
person can act on; the device turns it into ``DevFailed`` (``OET_InvalidRequest``). The text is
parsed once, strictly (:func:`..strictjson.loads`: any parse failure, whatever its cause, is a
``RequestError``), then validated by the models.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import Field, ValidationError

from ska_oso_oet.procedure import strictjson
from ska_oso_oet.procedure.application import (
    PrepareProcessCommand,
    StartProcessCommand,
    StopProcessCommand,
)
from ska_oso_oet.procedure.ui.models import (
    FunctionArgs,
    ProcedurePostRequest,
    RequestError,
    _Strict,
    describe,
)

M = TypeVar("M", bound=_Strict)


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


PREPARE_EXAMPLE = (
    '{"script": {"script_type": "filesystem", "script_uri": "file:///abs/script.py"}, '
    '"script_args": {"init": {"args": [], "kwargs": {}}}}'
)
START_EXAMPLE = '{"id": 1, "fn_name": "main", "run_args": {"args": [], "kwargs": {}}}'
STOP_EXAMPLE = '{"id": 1, "run_abort": false}'


def _parse(model: type[M], text: str, example: str) -> M:
    try:
        data = strictjson.loads(text)
    except strictjson.JSONInputError as exc:
        raise RequestError(
            f"The request is not valid JSON: {exc}; expected e.g. {example}"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(f"Invalid request: {describe(exc)}; expected e.g. {example}") from None


def parse_prepare(text: str) -> PrepareProcessCommand:
    return _parse(ProcedurePostRequest, text, PREPARE_EXAMPLE).to_command()


def parse_start(text: str) -> StartProcessCommand:
    return _parse(StartRequest, text, START_EXAMPLE).to_command()


def parse_stop(text: str) -> StopProcessCommand:
    return _parse(StopRequest, text, STOP_EXAMPLE).to_command()


def parse_ids(text: str) -> list[int] | None:
    """The argument of Summarise: a JSON list of IDs, or ``""``/``[]`` for every procedure."""
    if text is None or not text.strip():
        return None
    try:
        data: Any = strictjson.loads(text)
    except strictjson.JSONInputError as exc:
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
