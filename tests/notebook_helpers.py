"""Build small nbformat-4 notebooks for tests, as plain JSON (what Jupyter saves)."""

from __future__ import annotations

import json
from pathlib import Path


def code(source: str, *tags: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {"tags": list(tags)} if tags else {},
            "outputs": [], "source": source.splitlines(keepends=True)}


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source.splitlines(keepends=True)}


def write_notebook(path: Path, cells: list[dict], orch: dict | None = None) -> Path:
    """Write ``cells`` as a notebook at ``path`` (with ``metadata.orch`` when given)."""
    meta = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}}
    if orch is not None:
        meta["orch"] = orch
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 4}, indent=1))
    return path


def cells_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def text_of(cell: dict) -> str:
    """Everything a code cell printed (streams and text/plain results)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        elif "text/plain" in out.get("data", {}):
            data = out["data"]["text/plain"]
            parts.append("".join(data) if isinstance(data, list) else data)
    return "".join(parts)
