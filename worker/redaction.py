"""What a job says about itself reaches its owner only size-capped and without host paths.

Error details come from untrusted code (the engine's messages quote the model's own errors, and
the model chooses what those say) and from the sandbox (setup errors name the worker's files).
Where the service keeps its data, code and interpreter is none of the user's business, so every
absolute path is replaced: the known roots by a name, anything else by `<path>`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from worker.sandbox.policy import PROJECT_ROOT

#: longest error detail kept from a job
MAX_DETAIL = 2000
#: an absolute path: a slash not preceded by a word character, a dot or another path character
_ABSOLUTE = re.compile(r"(?<![\w.~<>/-])/[^\s'\"`()\[\]{},;:]*")


def redact(text: str, places: dict[str, Path] | None = None, limit: int = MAX_DETAIL) -> str:
    """`text` with host paths replaced and at most `limit` characters.

    `places` maps a name to a folder whose path is replaced by `<name>` (e.g. the job's
    scratch by `<scratch>`); the project's code and the interpreter are always named.
    """
    named = {
        **(places or {}),
        "code": PROJECT_ROOT,
        "python": Path(sys.prefix),
        "python-base": Path(sys.base_prefix),
    }
    roots = sorted(
        ((str(Path(p)), f"<{name}>") for name, p in named.items() if str(p) not in ("", "/")),
        key=lambda item: -len(item[0]),
    )
    for root, label in roots:
        text = text.replace(root, label)
    text = _ABSOLUTE.sub("<path>", text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
