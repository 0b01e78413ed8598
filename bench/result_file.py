"""How a benchmark hands over its result: JSON on stdout, and the copy under results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], path: Path, save: bool = True) -> None:
    """Print ``result`` as indented JSON and, if ``save``, write it to ``path`` too."""
    text = json.dumps(result, indent=2)
    print(text)
    if save:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
