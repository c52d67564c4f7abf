"""Named SQL kept in real ``.sql`` files, so queries can be read and linted as SQL."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def load_queries(filename: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into ``{"x": "SQL ..."}``."""
    text = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
