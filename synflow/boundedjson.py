"""JSON from a request, with its nesting bounded before it is parsed.

`json.loads` recurses once per level: `[[[[...` 60 KB deep raises RecursionError, which no
validator expects (the API answered 500). Every JSON text that comes from a user (the `config`
part, `input_shape` and `exclude` given as JSON lists) goes through `loads` here, which counts
the brackets outside strings first and refuses more than `MAX_DEPTH` levels with a ValueError.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: the deepest a request needs is 3 (`{"inputs": [[1, 128]]}`); far below the recursion limit
MAX_DEPTH = 16
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, not counting brackets inside strings."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(text: str, what: str = "the JSON", max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, refusing nesting deeper than `max_depth` (ValueError, or its subclass
    json.JSONDecodeError for text that is not JSON)."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"{what} is nested {depth} levels deep; at most {max_depth} are allowed")
    return json.loads(text)
