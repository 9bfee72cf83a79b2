"""YAML files with line numbers, and pydantic errors turned into one line that names
``file:line``, the field, what is wrong and the fix. Used by job.yaml and config.yaml."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

#: Limits for a hand-written job.yaml or config.yaml; they stop alias bombs ("billion
#: laughs"), recursive aliases and deep nesting before they exhaust memory or the stack.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 20_000
from pydantic import BaseModel, ValidationError


def parse_yaml(text: str, source: Path, error: type[Exception], what: str) -> tuple[dict, dict]:
    """Parse ``text`` into (mapping, {key path: line}); ``error`` is raised with one line.

    ``what`` completes the message for an empty file ("a job needs ...").
    """
    if len(text) > MAX_BYTES:
        raise error(f"{source}: the file is {len(text) // 1024} KiB; the limit is {MAX_BYTES // 1024} KiB "
                    "— keep data in datasets, not in the YAML")
    try:
        _check_depth(text, source, error)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_size(node, source, error)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{source}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if node is None or data is None:
        raise error(f"{source}: the file is empty; {what}")
    if not isinstance(data, dict):
        raise error(f"{source}:1: expected a mapping of keys, got a {type(data).__name__}")
    for key_node, _ in node.value:
        if key_node.tag != "tag:yaml.org,2002:str":
            raise error(f"{source}:{key_node.start_mark.line + 1}: key {key_node.value!r} is not a string; "
                        "keys are names such as run, resources")
    duplicate = first_duplicate(node)
    if duplicate:
        key, first, second = duplicate
        raise error(f"{source}:{second}: duplicate key '{key}' (first on line {first}); "
                    "YAML keeps only one of them — delete or rename one")
    return data, node_lines(node)


def _check_depth(text: str, source: Path, error: type[Exception]) -> None:
    """Refuse nesting deeper than MAX_DEPTH, from the parser's events (no recursion)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 1
                raise error(f"{source}:{line}: nested more than {MAX_DEPTH} levels deep; "
                            "a job or config file never needs that — flatten it")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_size(node: yaml.Node | None, source: Path, error: type[Exception]) -> None:
    """Refuse a document whose aliases expand past MAX_NODES nodes (or loop forever)."""
    count = 0
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise error(f"{source}:{current.start_mark.line + 1}: the YAML expands to more than {MAX_NODES} "
                        "values (aliases repeated inside aliases?); write the values out plainly")
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                stack.extend((key_node, value_node))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def first_duplicate(node: yaml.Node) -> tuple[str, int, int] | None:
    """(key, first line, second line) of the first key written twice in one mapping.

    PyYAML silently keeps the last of two equal keys (a second ``run:`` wins, the
    first of two platforms with one name is dropped), so orch refuses the file.
    """
    found: list[tuple[int, str, int]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in current.value:
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        found.append((line, key_node.value, seen[key_node.value]))
                    else:
                        seen[key_node.value] = line
                stack.append(value_node)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    if not found:
        return None
    line, key, first = min(found)
    return key, first, line


def node_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map every key path (("resources", "gpu"), ("datasets", 0, "path")) to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            node_lines(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            node_lines(item, path + (i,), out)
    return out


def where(source: Path | None, lines: dict, loc: tuple, default: str = "job.yaml") -> str:
    """``file:line`` of the deepest known part of ``loc``."""
    name = str(source) if source else default
    probe = loc
    while probe and probe not in lines:
        probe = probe[:-1]
    line = lines.get(probe)
    return f"{name}:{line}" if line else name


def field_name(loc: tuple) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at ``loc`` (for "did you mean" hints)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *(getattr(ann, "__args__", ()) or ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's validator markers from a location."""
    return tuple(p for p in loc if not (isinstance(p, str) and ("function-" in p or p.startswith("["))))


def message(err: dict, model: type[BaseModel], docs: str) -> str:
    loc = clean_loc(tuple(err["loc"]))
    kind = err["type"]
    field = field_name(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = known_keys(model, loc)
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        suggestion = f" — did you mean '{hint[0]}'?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
        return f"unknown key '{key}'{suggestion} (see {docs})"
    if kind == "missing":
        example = {"run": " (e.g. run: python train.py)", "path": " (the local file or directory)",
                   "type": " (e.g. type: local)"}.get(str(loc[-1]), "")
        return f"{field}: required field is missing{example}"
    msg = str(err.get("msg", "invalid value"))
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    got: Any = err.get("input")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{field}: {msg[0].lower() + msg[1:]}, got {got!r}"
    return f"{field}: {msg}"


def first_error(exc: ValidationError, model: type[BaseModel], source: Path, lines: dict, docs: str,
                prefix: tuple = ()) -> str:
    """The first error in file order, as ``file:line: message``."""
    errors = exc.errors()
    errors.sort(key=lambda e: lines.get(prefix + clean_loc(tuple(e["loc"]))[:len(prefix) + 1], 0) or 0)
    err = errors[0]
    loc = prefix + clean_loc(tuple(err["loc"]))
    text = message(err, model, docs)
    if prefix and not text.startswith("unknown key"):
        text = f"{field_name(prefix)}.{text}"
    return f"{where(source, lines, loc)}: {text}"
