"""What the benchmark scripts share: writing their result file.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``common``.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, data: object, *, indent: int = 2, announce: bool = False) -> None:
    """Write ``data`` to ``path`` as indented JSON ending in a newline, creating its folder.

    ``announce`` prints ``wrote PATH`` afterwards (for scripts whose output is the file alone).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n")
    if announce:
        print(f"wrote {path}")
