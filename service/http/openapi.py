"""OpenAPI glue for the HTTP layer: which problem responses a route documents.

The bodies themselves are the client distribution's wire models
(``fashion_florence_client.protocol`` and ``.problems``).
"""

from __future__ import annotations

from typing import Any

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE, Problem


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"model": Problem, "content": {PROBLEM_CONTENT_TYPE: {"schema": schema}}}
        for status in statuses
    }
