"""A method's results file: one JSON record per problem, appended as problems finish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from powersampling.errors import InvalidArgument


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results file; a torn last line (a run killed mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise InvalidArgument("out", f"{path} line {i + 1} is not JSON; the file is damaged") from None
    return records


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a run killed mid-write) so that appended records start on a new line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


__all__ = ["drop_torn_tail", "load_records"]
