"""`flow`: Prefect's flow decorator, for flows whose parameters are plain JSON values.

Prefect records a run's parameters through FastAPI's `jsonable_encoder`, and importing FastAPI
(the web framework, Starlette, its OpenAPI models) costs a command about 0.2-0.3 s of CPU and
5 MB before its first step. pgkeeper's flow parameters are names, numbers, flags and lists of
them: JSON already, recorded as they are. Any other value goes through Prefect's own encoding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.flows import Flow

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


class PlainParametersFlow(Flow):
    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        if not (self.ismethod or self.isclassmethod) and all(is_plain_json(v) for v in parameters.values()):
            return dict(parameters)
        return super().serialize_parameters(parameters)


def flow(**options: Any) -> Callable[[Callable[..., Any]], PlainParametersFlow]:
    """`prefect.flow(**options)` for a flow whose parameters are plain JSON values."""
    return lambda fn: PlainParametersFlow(fn=fn, **options)
