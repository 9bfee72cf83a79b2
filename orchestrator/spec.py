"""job.yaml -> a validated JobSpec, with errors that name ``file:line``, the field and the fix.

Validation is pydantic v2 (``extra="forbid"`` everywhere); line numbers come from
PyYAML's node tree, so every error can point at the line to edit.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import SpecError
from .gpus import GPU_TYPES
from .notify.config import JobNotify, job_notify
from .settings import Duration, PositiveDuration
from .yamlfile import first_error, message, parse_yaml, where

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DOCS = "docs/job-spec.md"
#: The longest ``run:`` command: Linux refuses one argument over 128 KiB (MAX_ARG_STRLEN).
MAX_RUN_BYTES = 128 * 1024 - 1
#: Names a secret may not take: the job's own loader and interpreter read them, and
#: ``ORCH_*`` is orch's (a "secret" PATH or LD_PRELOAD would run the controller's value).
RESERVED_NAMES = frozenset({"PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV",
                            "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "LD_PRELOAD", "LD_LIBRARY_PATH",
                            "LD_AUDIT"})
#: Integers orch stores (priority): the state DB's INTEGER column.
INT32 = (-(2 ** 31), 2 ** 31 - 1)


def _no_bool(value: Any) -> Any:
    """YAML reads ``retries: true`` as a bool, which pydantic would take as 1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {str(value).lower()}")
    return value


Count = Annotated[int, BeforeValidator(_no_bool)]


def _reserved(name: str, what: str) -> None:
    if name.upper().startswith("ORCH_"):
        raise ValueError(f"{what} '{name}': names starting with ORCH_ are orch's own; rename it")


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte, which no shell or environment can carry")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Model):
    """What the job needs from a platform."""

    #: () = no GPU; ("any",) = any GPU; otherwise GPU types in order of preference.
    gpu: tuple[str, ...] = ()
    #: Also run without a GPU when no GPU platform can take the job (``gpu: [any, none]``).
    cpu_fallback: bool = False
    gpu_count: Count = Field(default=1, ge=0, le=16)
    min_gpu_memory_gb: float | None = Field(default=None, gt=0)
    #: seconds; written as "2h30m" in job.yaml.
    max_runtime: PositiveDuration = 3600.0

    @model_validator(mode="before")
    @classmethod
    def _trailing_none(cls, data: Any) -> Any:
        """``gpu: [L4, T4, none]``: a preference list ending in none means "else the CPU"."""
        if isinstance(data, dict) and isinstance(data.get("gpu"), (list, tuple)) and len(data["gpu"]) > 1:
            last = data["gpu"][-1]
            if isinstance(last, str) and last.strip().lower() in ("none", "cpu"):
                data = {**data, "gpu": list(data["gpu"][:-1]), "cpu_fallback": True}
        return data

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: Any) -> tuple[str, ...]:
        if value is None or value is False or value == [] or value == ():
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError("expected none, any, a GPU type or a list of GPU types")
        out: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"{item!r} is not a GPU type; expected one of none, any, {', '.join(GPU_TYPES)}")
            word = item.strip()
            if word.lower() in ("none", "cpu"):
                if len(items) > 1:
                    raise ValueError("'none' may only come last in a preference list "
                                     "(e.g. [T4, none]: a T4 if one is free, else the CPU)")
                return ()
            if word.lower() == "any":
                out.append("any")
                continue
            canonical = {t.lower(): t for t in GPU_TYPES}.get(word.lower())
            if canonical is None:
                hint = difflib.get_close_matches(word.upper(), GPU_TYPES, n=1, cutoff=0.5)
                did = f" — did you mean '{hint[0]}'?" if hint else ""
                raise ValueError(
                    f"unknown GPU type '{word}'{did} (expected one of none, any, {', '.join(GPU_TYPES)})"
                )
            out.append(canonical)
        return tuple(out)

    @model_validator(mode="after")
    def _count(self) -> "Resources":
        if not self.gpu and "gpu_count" in self.model_fields_set and self.gpu_count:
            raise ValueError("gpu_count is set but gpu is none; set gpu: any (or a type)")
        return self

    @property
    def wants_gpu(self) -> bool:
        return bool(self.gpu)

    @property
    def gpus_needed(self) -> int:
        return self.gpu_count if self.gpu else 0


class Dataset(_Model):
    """A local file or directory the job sees at ``$ORCH_DATA/<name>``."""

    path: str
    name: str = ""

    @model_validator(mode="after")
    def _default_name(self) -> "Dataset":
        if not self.name:
            object.__setattr__(self, "name", Path(self.path.rstrip("/")).name or "data")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name '{self.name}' must be letters, digits, '.', '_' or '-'")
        return self


class Setup(_Model):
    """pip requirements: a list, or a requirements file inside the code directory."""

    requirements: tuple[str, ...] = ()
    file: str | None = None
    #: Allow pip options (``--index-url=...``, ``-e``) among the requirements: they change
    #: where packages come from, so a job must say so.
    allow_pip_options: bool = False

    @model_validator(mode="after")
    def _options(self) -> "Setup":
        for item in self.requirements:
            if not item.strip():
                raise ValueError(f"{item!r} is not a pip requirement string")
            if item.lstrip().startswith("-") and not self.allow_pip_options:
                raise ValueError(f"'{item}' is a pip option, not a requirement; if you mean it, write "
                                 "setup: {requirements: [...], allow_pip_options: true}")
        return self


def _param_value(name: str, value: Any) -> str:
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise ValueError(f"{name}: a parameter value must be a string, number or boolean")
    return str(value).lower() if isinstance(value, bool) else str(value)


def _param_name(name: Any) -> str:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid parameter name (it becomes an environment variable: "
                         "letters, digits and '_')")
    if name.upper().startswith("ORCH_"):
        raise ValueError(f"'{name}': names starting with ORCH_ are reserved")
    return name


#: More points than this is almost certainly a mistake in a grid.
MAX_SWEEP_POINTS = 1000


class Sweep(_Model):
    """``sweep:``: one job per parameter set, all sharing one bundle; each point's values
    reach the job as environment variables.

    ``grid`` takes every combination of its lists; ``points`` lists the sets explicitly.
    """

    grid: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    points: tuple[dict[str, str], ...] = ()

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of NAME: [values]")
        out = {}
        for name, values in value.items():
            _param_name(name)
            items = values if isinstance(values, (list, tuple)) else [values]
            if not items:
                raise ValueError(f"{name}: give at least one value")
            out[name] = tuple(_param_value(name, v) for v in items)
        return out

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list of parameter sets, e.g. [{LR: 0.1}, {LR: 0.01}]")
        out = []
        for i, point in enumerate(value):
            if not isinstance(point, dict) or not point:
                raise ValueError(f"point {i}: expected a mapping NAME: value")
            out.append({_param_name(k): _param_value(k, v) for k, v in point.items()})
        return tuple(out)

    @model_validator(mode="after")
    def _size(self) -> "Sweep":
        if not self.grid and not self.points:
            raise ValueError("give `grid:` (every combination) or `points:` (a list of parameter sets)")
        if self.grid and self.points:
            raise ValueError("give either `grid:` or `points:`, not both")
        n = len(self.points) if self.points else math.prod(len(v) for v in self.grid.values())
        if n > MAX_SWEEP_POINTS:
            raise ValueError(f"{n} points is more than {MAX_SWEEP_POINTS}; split the sweep")
        return self


class JobSpec(_Model):
    """A validated job.yaml. Paths (``code``, dataset paths) are absolute after loading."""

    name: str = ""
    code: str = "."
    run: str
    setup: Setup = Setup()
    env: dict[str, str] = Field(default_factory=dict)
    #: A notebook job's parameters (``run: x.ipynb``): injected after its `parameters` cell.
    params: dict[str, str] = Field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    datasets: tuple[Dataset, ...] = ()
    outputs: tuple[str, ...] = ()
    resources: Resources = Resources()
    platforms: tuple[str, ...] = ()
    retries: Count = Field(default=2, ge=0, le=100)
    retries_on_error: Count = Field(default=0, ge=0, le=100)
    priority: Count = Field(default=0, ge=INT32[0], le=INT32[1])
    checkpoint: str | None = None
    internet: bool = True
    #: Where secret values come from: this controller's environment ("local", the only
    #: source; "kaggle" is refused with the reason, see _secrets_from).
    secrets_from: Literal["local", "kaggle"] = "local"
    #: seconds between SIGTERM and SIGKILL, and how long before a session ends the job is
    #: told to checkpoint; None = the platform's or controller's grace.
    grace: Duration | None = None
    sweep: Sweep | None = None
    #: Channels of config.yaml's notify: to add for this job, or to silence (notify: false).
    notify: Annotated[JobNotify, BeforeValidator(job_notify)] = JobNotify()

    _source: Path | None = PrivateAttr(default=None)
    _lines: dict = PrivateAttr(default_factory=dict)

    @field_validator("run")
    @classmethod
    def _run(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; give the shell command that runs the job")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_RUN_BYTES:
            raise ValueError(f"is {len(value.encode('utf-8', 'surrogatepass')) // 1024} KiB; a command line "
                             "holds at most 128 KiB — put the commands in a script and run that")
        return _no_nul(value, "run:")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not _NAME.fullmatch(value):
            raise ValueError(f"'{value}' must start with a letter or digit and use only letters, digits, '.', '_', '-'")
        return value

    @field_validator("setup", mode="before")
    @classmethod
    def _setup(cls, value: Any) -> Any:
        if value is None:
            return Setup()
        if isinstance(value, str):
            return Setup(file=value)
        if isinstance(value, (list, tuple)):
            for item in value:
                if not isinstance(item, str) or not item.strip():
                    raise ValueError(f"{item!r} is not a pip requirement string")
            return {"requirements": tuple(value)}
        if isinstance(value, dict):
            return value
        raise ValueError("expected a list of pip requirements or the path of a requirements file")

    @field_validator("env", "params", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of NAME: value")
        out = {}
        for key, val in value.items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise ValueError(f"'{key}' is not a valid environment variable name")
            _reserved(key, "env")
            if isinstance(val, (dict, list)) or val is None:
                raise ValueError(f"{key}: value must be a string, number or boolean")
            out[key] = _no_nul(str(val).lower() if isinstance(val, bool) else str(val), f"env {key}")
        return out

    @field_validator("secrets_from")
    @classmethod
    def _secrets_from(cls, value: str) -> str:
        if value == "kaggle":
            raise ValueError(
                "secrets_from: kaggle is not supported: Kaggle's API has no way to attach Kaggle Secrets to a "
                "kernel it creates (a push carries no secrets), and every attempt is a new kernel, so the job "
                "could never read them; remove the line and run jobs with secrets on a platform that takes them")
        return value

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, dict):
            raise ValueError("list only the NAMES of local environment variables (values are never written in job.yaml)")
        if isinstance(value, str):
            value = [value]
        for item in value:
            if not isinstance(item, str) or not _ENV_NAME.fullmatch(item):
                raise ValueError(f"{item!r} is not an environment variable name")
            _reserved(item, "secret")
            if item.upper() in RESERVED_NAMES or item.upper().startswith("LD_"):
                raise ValueError(f"secret '{item}': the job's shell and loader read this name; "
                                 "a secret must have a name of its own")
        return tuple(value)

    @field_validator("outputs", "platforms", mode="before")
    @classmethod
    def _str_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(value)
        if p.is_absolute() or ".." in p.parts or not value.strip() or not p.parts:
            raise ValueError(f"'{value}' must be a relative directory inside the code directory "
                             "(a subdirectory such as ckpt/, not the code directory itself)")
        return value.rstrip("/")

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            p = Path(item)
            if not item.strip() or p.is_absolute() or item.startswith("~") or ".." in p.parts:
                raise ValueError(f"'{item}' must be a relative path or pattern inside the job's directory")
        return value

    @model_validator(mode="after")
    def _unique_datasets(self) -> "JobSpec":
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"datasets: two datasets are named '{dupes[0]}'; give each a distinct name")
        both = sorted(set(self.env) & set(self.secrets))
        if both:
            raise ValueError(f"'{both[0]}' is both in env: and in secrets:; keep it in one of them")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def source(self) -> Path | None:
        """The job.yaml this spec came from."""
        return self._source

    def where(self, *path: Any) -> str:
        """``file:line`` of a field, for messages raised after loading."""
        return where(self._source, self._lines, tuple(path))

    def public_dict(self) -> dict[str, Any]:
        """The spec as stored in the DB: secret NAMES only (values are never in the spec)."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------- loading


def load(path: str | Path) -> JobSpec:
    """Read and validate a job.yaml, or infer a spec from a notebook (``x.ipynb``).

    Raises:
        SpecError: one line, ``file:line: field: what is wrong`` plus the fix.
    """
    source = Path(path)
    if source.suffix == ".ipynb":
        from .notebooks import infer

        doc = {"name": _default_name(Path(source.stem)), **infer(source)}
        return _validated(doc, source, {}, prefix=("metadata", "orch"))
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{source}: no such file; give the path of a job.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{source}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    return loads(text, source)


def loads(text: str, source: Path) -> JobSpec:
    """Validate job.yaml ``text``; ``source`` names it in errors and anchors relative paths."""
    data, lines = parse_yaml(text, source, SpecError, what="a job needs at least `run: <command>`")
    return _validated(data, source, lines)


def _validated(data: Any, source: Path, lines: dict, prefix: tuple = ()) -> JobSpec:
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(first_error(exc, JobSpec, source, lines, DOCS, prefix)) from None
    spec._source = source
    spec._lines = lines
    return _resolve_paths(spec, source)


def _resolve_paths(spec: JobSpec, source: Path) -> JobSpec:
    """Make paths absolute (relative to the yaml's directory) and check they exist."""
    base = source.resolve().parent
    code = (base / spec.code).resolve()
    if not code.is_dir():
        raise SpecError(f"{spec.where('code')}: code: directory '{spec.code}' does not exist (relative to {base})")
    datasets = []
    for i, ds in enumerate(spec.datasets):
        p = (base / Path(ds.path).expanduser()).resolve()  # ~ first: base / '~/x' is ./~/x
        if not p.exists():
            raise SpecError(f"{spec.where('datasets', i, 'path')}: datasets[{i}].path: '{ds.path}' does not exist (relative to {base})")
        if not (p.is_file() or p.is_dir()):
            raise SpecError(f"{spec.where('datasets', i, 'path')}: datasets[{i}].path: '{ds.path}' is not a regular "
                            "file or directory (a FIFO, socket or device cannot be bundled)")
        datasets.append(ds.model_copy(update={"path": str(p)}))
    if spec.setup.file:
        req = (code / spec.setup.file).resolve()
        if not req.is_file() or not str(req).startswith(str(code) + "/"):
            raise SpecError(
                f"{spec.where('setup')}: setup: requirements file '{spec.setup.file}' not found inside the code directory {code}"
            )
    name = spec.name or _default_name(code if spec.code != "." else base)
    resolved = spec.model_copy(update={"code": str(code), "datasets": tuple(datasets), "name": name})
    resolved._source = spec._source
    resolved._lines = spec._lines
    from . import notebooks

    if notebooks.is_notebook_run(resolved.run):
        return notebooks.resolve(resolved)
    if resolved.params:
        raise SpecError(f"{spec.where('params')}: params: is for notebook jobs (run: x.ipynb); "
                        "a command takes its values from env:")
    return resolved


def _default_name(directory: Path) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", directory.name).strip("-._") or "job"
    return cleaned[:64]


def from_public_dict(doc: dict[str, Any]) -> JobSpec:
    """Rebuild a stored spec (paths already absolute, already validated)."""
    doc = dict(doc)
    resources = dict(doc.get("resources") or {})
    if isinstance(resources.get("max_runtime"), (int, float)):
        resources["max_runtime"] = f"{resources['max_runtime']}s"
    if not resources.get("gpu"):
        resources.pop("gpu_count", None)
    doc["resources"] = resources
    if isinstance(doc.get("grace"), (int, float)):
        doc["grace"] = f"{doc['grace']}s"
    try:
        return JobSpec.model_validate(doc)
    except ValidationError as exc:  # queued by another version, or before a check existed
        raise SpecError(f"the stored job.yaml is no longer valid: {message(exc.errors()[0], JobSpec, DOCS)}; "
                        "cancel the job and submit it again") from None
