"""`flow`: Prefect's flow decorator, for flows whose parameters are plain JSON values.

Prefect records a run's parameters through FastAPI's `jsonable_encoder`, and importing FastAPI
(the web framework, Starlette, its OpenAPI models) costs a command about 0.2-0.3 s of CPU and
5 MB before its first step. pgkeeper's flow parameters are names, numbers, flags and lists of
them: JSON already, recorded as they are; a pydantic model (the restore's plan) is recorded as
`jsonable_encoder` records it, its `model_dump(mode="json", by_alias=True)`. Any other value goes
through Prefect's own encoding.

Prefect also builds a flow's parameter schema (pydantic models per parameter, docstrings parsed,
pydantic.v1 imported to rule out v1 types) when the flow is declared, i.e. while a command
imports it; only deployments read it (`Flow.parameters`). These flows build it when it is
first read, the same schema.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import prefect.flows
from prefect.flows import Flow
from prefect.utilities.callables import parameter_schema  # what prefect.flows calls, from where it lives
from pydantic import BaseModel

JSON_SCALARS = (str, int, float, bool, type(None))


def is_plain_json(value: Any) -> bool:
    """Whether `value` is JSON as it is (exact types: an Enum or a tuple is encoded by Prefect)."""
    if type(value) in JSON_SCALARS:
        return True
    if type(value) is list:
        return all(is_plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain_json(v) for k, v in value.items())
    return False


_declaring = threading.local()  # set while a PlainParametersFlow is being declared, on that thread
_LATER = object()  # Flow.parameters not built yet


def _schema_unless_declaring(fn: Callable[..., Any]) -> Any:
    return _LATER if getattr(_declaring, "on", False) else parameter_schema(fn)


class PlainParametersFlow(Flow):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _declaring.on = True  # Flow.__init__ asks prefect.flows.parameter_schema: answered later
        try:
            super().__init__(*args, **kwargs)
        finally:
            _declaring.on = False

    @property  # type: ignore[override]
    def parameters(self) -> Any:
        if self.__dict__.get("_parameters", _LATER) is _LATER:
            self.__dict__["_parameters"] = parameter_schema(self.fn)
        return self.__dict__["_parameters"]

    @parameters.setter
    def parameters(self, value: Any) -> None:
        self.__dict__["_parameters"] = value

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if not (self.ismethod or self.isclassmethod) and all(is_plain_json(v) or _is_model(v)
                                                             for v in parameters.values()):
            return {k: v.model_dump(mode="json", by_alias=True) if _is_model(v) else v for k, v in parameters.items()}
        return super().serialize_parameters(parameters)


def _is_model(value: Any) -> bool:
    """A pydantic (v2) model: what FastAPI's jsonable_encoder turns into model_dump(mode="json",
    by_alias=True) before encoding that dict again, which changes nothing in a JSON-mode dump."""
    return isinstance(value, BaseModel)


# Flow.__init__ looks the name up in prefect.flows at each declaration; other flows get the
# schema built as before (only a PlainParametersFlow's declaration, on its thread, defers it).
prefect.flows.parameter_schema = _schema_unless_declaring


def flow(**options: Any) -> Callable[[Callable[..., Any]], PlainParametersFlow]:
    """`prefect.flow(**options)` for a flow whose parameters are plain JSON values."""
    return lambda fn: PlainParametersFlow(fn=fn, **options)
