"""A block's JSON schema, computed once per class.

Prefect asks a block for its whole JSON schema once per field whenever it serialises it
(Block._field_has_secrets, on every save and every model_dump with secrets), and the schema of
a block holding other blocks (the repository's S3Bucket with its AwsCredentials) recomputes the
nested blocks' checksums each time: seconds of CPU per save. A class's schema never changes.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import GenerateJsonSchema

_SCHEMAS: dict[tuple, dict[str, Any]] = {}


class CachedSchema:
    """Mix in before Block: model_json_schema computed once per class and arguments."""

    @classmethod
    def model_json_schema(cls, by_alias: bool = True, ref_template: str = "#/definitions/{model}",
                          schema_generator: type[GenerateJsonSchema] = GenerateJsonSchema,
                          mode: str = "validation") -> dict[str, Any]:
        key = (cls, by_alias, ref_template, schema_generator, mode)
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(by_alias, ref_template, schema_generator, mode)  # type: ignore[misc]
        return copy.deepcopy(_SCHEMAS[key])  # callers edit what they get
