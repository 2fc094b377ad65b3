"""The ska_oso_oet.procedure.ui package contains code that belongs to the OET procedure UI
layer. This consists of the Procedure REST resources (:mod:`.rest`, served beside the Tango
device by :mod:`.server`), the pydantic models of the JSON requests that the REST API and the
Tango commands accept (:mod:`.models`, :mod:`.tango`), and the JSON form of what they return
(:mod:`.summary`).

A request means the same thing whichever way it arrives, and is answered with the same JSON.
"""

from ska_oso_oet.procedure.ui.models import (
    ProcedurePostRequest,
    ProcedurePutRequest,
    RequestError,
)
from ska_oso_oet.procedure.ui.summary import script_to_dict, summary_to_dict, to_json
from ska_oso_oet.procedure.ui.tango import (
    StartRequest,
    StopRequest,
    parse_ids,
    parse_prepare,
    parse_start,
    parse_stop,
)

__all__ = [
    "ProcedurePostRequest",
    "ProcedurePutRequest",
    "RequestError",
    "StartRequest",
    "StopRequest",
    "parse_ids",
    "parse_prepare",
    "parse_start",
    "parse_stop",
    "script_to_dict",
    "summary_to_dict",
    "to_json",
]
