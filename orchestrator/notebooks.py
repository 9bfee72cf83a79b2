"""Notebooks as jobs: ``run: train.ipynb`` and ``orch submit train.ipynb``.

A notebook job is an ordinary job whose command runs ``kernels/nbexec.py``, which orch
adds to the bundle as ``.orch/nbexec.py`` (``.orch/`` is never taken from the code
directory, so it cannot collide). The executor script does the notebook work on the
remote (parameters, per-cell timeouts, the executed notebook, the failure line); this
module does the controller's part: turn ``run: x.ipynb A=1`` into that command, infer a
spec from a notebook with no job.yaml, and refuse at submit a notebook job that can
find no executor where it may run.

Design choice: the notebook becomes a command at load time rather than a new kind of
job, so the runner, the platforms, retries, chains and sweeps handle it unchanged.
"""

from __future__ import annotations

import json
import keyword
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernels.nbexec import EXECUTORS

from .errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from .platforms.base import Offer
    from .spec import JobSpec

#: Where the executor lands in the bundle, relative to the job's working directory.
EXECUTOR = ".orch/nbexec.py"
#: The executor runs with the runner's own interpreter (``$ORCH_PYTHON``), not whichever
#: ``python3`` comes first on the host's PATH: on a host with two Pythons only the
#: runner's is known to be the one the job's ``setup:`` was installed for.
PYTHON = '"${ORCH_PYTHON:-python3}"'
#: A notebook larger than this is refused at submit (it travels and is parsed as JSON).
MAX_NOTEBOOK_BYTES = 64 * 1024 * 1024
#: Platform types whose images ship a notebook executor (papermill / nbclient).
HAS_EXECUTOR = frozenset({"kaggle", "colab", "colab_drive"})
#: Requirements that give a job its own executor.
EXECUTOR_PACKAGES = ("papermill", "nbclient")
DOCS = "docs/notebooks.md"


def executor_script() -> Path:
    """The stdlib-only executor shipped in every notebook job's bundle."""
    return Path(__file__).resolve().parent.parent / "kernels" / "nbexec.py"


def bundle_files(spec: JobSpec) -> list[tuple[str, Path]]:
    """Files orch adds to the code archive for ``spec``: the executor, for a notebook job."""
    return [(EXECUTOR, executor_script())] if notebook_of(spec) else []


def is_notebook_run(run: str) -> bool:
    """Whether a ``run:`` as written names a notebook (``train.ipynb [NAME=value ...]``)."""
    try:
        words = shlex.split(run)
    except ValueError:
        return False
    return bool(words) and words[0].endswith(".ipynb")


def notebook_of(spec: JobSpec) -> str | None:
    """The notebook a loaded spec runs, or None for a plain command."""
    try:
        words = shlex.split(spec.run)
    except ValueError:
        return None
    return words[2] if len(words) > 2 and words[:2] == [shlex.split(PYTHON)[0], EXECUTOR] else None


def read_notebook(path: Path, what: str) -> dict:
    """The notebook's JSON, or a one-line SpecError naming ``what`` and the fix."""
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise SpecError(f"{what}: {path.name} is {size // 2**20} MiB; clear its outputs "
                            f"(a notebook over {MAX_NOTEBOOK_BYTES // 2**20} MiB is refused)")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{what}: notebook '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"{what}: {path.name} is not a notebook ({exc.__class__.__name__}: {exc}); "
                        "save it again from Jupyter") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list) or doc.get("nbformat") != 4:
        raise SpecError(f"{what}: {path.name} is not an nbformat 4 notebook; open and save it in Jupyter "
                        "(or `jupyter nbconvert --to notebook` it)")
    return doc


def infer(path: Path) -> dict[str, Any]:
    """A job.yaml document for ``orch submit x.ipynb``: everything (resources, datasets,
    outputs, setup, params, sweep, ...) from the notebook's ``metadata.orch`` mapping,
    when it has one; ``spec.load`` names the job after the file."""
    doc = read_notebook(path, str(path))
    meta = (doc.get("metadata") or {}).get("orch") or {}
    if not isinstance(meta, dict):
        raise SpecError(f"{path}: metadata.orch: expected a mapping of job.yaml keys (see {DOCS})")
    for key in ("run", "code"):
        if key in meta:
            raise SpecError(f"{path}: metadata.orch.{key}: a notebook submitted alone runs itself from its own "
                            f"directory; remove '{key}' (or write a job.yaml)")
    return {**meta, "run": shlex.quote(path.name)}


def resolve(spec: JobSpec) -> JobSpec:
    """Turn ``run: x.ipynb NAME=value ...`` into the executor command.

    Parameters are ``params:``, the ``NAME=value`` words after the notebook and the
    sweep's names; each reaches the job as an environment variable (so a sweep point
    sets its own) and the executor injects them after the cell tagged ``parameters``.
    """
    where = spec.where("run")
    words = shlex.split(spec.run)
    notebook, rest = words[0], words[1:]
    code = Path(spec.code)
    path = (code / notebook).resolve()
    if not str(path).startswith(str(code) + "/"):
        raise SpecError(f"{where}: run: notebook '{notebook}' must lie inside the code directory {code}")
    read_notebook(path, f"{where}: run")
    params = dict(spec.params)
    cell_timeout = executor = None
    while rest:
        word = rest.pop(0)
        if word in ("--cell-timeout", "--cell_timeout") and rest:
            cell_timeout = _seconds(rest.pop(0), where)
        elif word == "--executor" and rest and rest[0] in EXECUTORS:
            executor = rest.pop(0)
        elif "=" in word and not word.startswith("-"):
            name, value = word.split("=", 1)
            params[name] = value
        else:
            raise SpecError(f"{where}: run: '{word}' after the notebook is not NAME=value, --cell-timeout DURATION "
                            f"or --executor {'|'.join(EXECUTORS)} (e.g. run: {notebook} EPOCHS=3 --cell-timeout 10m)")
    names = list(params) + [n for n in _sweep_names(spec) if n not in params]
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name.upper().startswith("ORCH_"):
            raise SpecError(f"{where}: parameter '{name}' must be a Python name (letters, digits, '_'; not a keyword "
                            "nor ORCH_*): it becomes a variable in the notebook")
    both = sorted(set(params) & set(spec.env))
    if both:
        raise SpecError(f"{where}: '{both[0]}' is both a notebook parameter and in env:; keep it in one of them")
    cmd = [EXECUTOR, path.relative_to(code).as_posix()]
    for name in names:
        cmd += ["--param", name]
    if cell_timeout:
        cmd += ["--cell-timeout", f"{cell_timeout:g}"]
    if executor:
        cmd += ["--executor", executor]
    if not spec.internet:
        cmd.append("--no-install")
    env = {**spec.env, **{k: str(v) for k, v in params.items()}}
    out = spec.model_copy(update={"run": f"{PYTHON} {shlex.join(cmd)}", "env": env})
    out._source, out._lines = spec._source, spec._lines
    return out


def _sweep_names(spec: JobSpec) -> list[str]:
    if spec.sweep is None:
        return []
    if spec.sweep.grid:
        return list(spec.sweep.grid)
    return list(dict.fromkeys(k for point in spec.sweep.points for k in point))


def _seconds(text: str, where: str) -> float:
    from .durations import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise SpecError(f"{where}: run: --cell-timeout {text}: {exc}") from None
    return value


def check_executor(spec: JobSpec, offers: list[Offer]) -> None:
    """Refuse at submit a notebook job that cannot get an executor on any of ``offers``
    (its allowed platforms): with ``internet: false`` the executor cannot install one,
    so some platform must have one (Kaggle and Colab images do; this machine does when
    papermill or nbclient+ipykernel is importable here; an ssh host is not known, so it
    counts)."""
    if notebook_of(spec) is None or spec.internet:
        return
    if any(_requirement_name(r) in EXECUTOR_PACKAGES for r in spec.setup.requirements):
        return
    missing = []
    for offer in offers:
        if offer.type in HAS_EXECUTOR or offer.type == "ssh" or (offer.type == "local" and _local_executor()):
            return
        missing.append(offer.platform)
    raise SpecError(f"{spec.where('internet')}: internet: false and no notebook executor where this job may run "
                    f"({', '.join(missing) or 'no platform'}: none of papermill, nbclient+ipykernel, nbconvert); "
                    "run `pip install 'orch[notebooks]'` here, or add nbclient and ipykernel to setup:")


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1).lower() if match else ""


def _local_executor() -> bool:
    """Whether this Python (the one the local platform runs jobs with) has an executor."""
    from kernels.nbexec import find_executor

    return find_executor(None) is not None
