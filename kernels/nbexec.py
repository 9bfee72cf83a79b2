"""Run one Jupyter notebook as a job, with papermill's semantics, using what the host has.

orch ships this file in the bundle as ``.orch/nbexec.py`` when a job's ``run:`` names a
notebook, and runs it with the runner's Python (``$ORCH_PYTHON``). Like ``runner.py`` it is stdlib-only
(Python >= 3.9): the executor it drives is found on the host, in this order:
nbclient, papermill, ``nbconvert --execute``. When none is present and the job
may use the internet, it installs ``nbclient`` + ``ipykernel`` with ``pip --target``
next to the job (the host's Python is never modified).

Design choice: nbclient before papermill. papermill (>= 2) executes through nbclient,
so nbclient is there wherever papermill is, and driving it in-process gives what the
papermill CLI cannot: the running cell is interrupted on SIGTERM (so a notebook can
save its checkpoint at a session's end), the notebook is saved before every cell, and
each cell's timeout shrinks with the time left. The parameters cell is papermill's.

What it does:

1. reads the notebook (nbformat 4 JSON) and puts a cell tagged
   ``injected-parameters`` after the cell tagged ``parameters`` (at the top when none
   is tagged), assigning each parameter named with ``--param`` its value from the
   environment (sweep points and ``params:`` reach the job there), typed the way
   papermill's ``-p`` types them;
2. executes every cell top to bottom in a fresh kernel, each cell under a timeout that
   never runs past ``$ORCH_DEADLINE``;
3. writes the executed notebook, with its outputs, to ``$ORCH_OUTPUT_DIR/<name>.ipynb``
   (also when a cell fails or the job is stopped: as far as it got), with the job's
   secrets masked in every output as the runner masks them in ``job.log``, its images to
   ``$ORCH_OUTPUT_DIR/<name>_images/``, and ``metrics.json`` from scrapbook-style
   ``glue`` outputs;
4. when a cell fails, writes what failed (cell number, its source line, the exception)
   to ``$ORCH_FAILURE_FILE``, which the runner puts in ``result.json``, and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

INJECTED_TAG = "injected-parameters"
#: A cell's timeout never reaches past ``$ORCH_DEADLINE`` by more than this: at the
#: deadline the runner's SIGTERM interrupts the cell (see Execution.on_term), which
#: lets a notebook save its checkpoint; the timeout is only the backstop.
DEADLINE_MARGIN = 5.0
EXECUTORS = ("nbclient", "papermill", "nbconvert")
SCRAP_MIME = "application/scrapbook.scrap.json+json"
IMAGE_MIMES = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/svg+xml": "svg"}
BINARY_MIMES = frozenset(m for m, ext in IMAGE_MIMES.items() if ext != "svg")
MAX_TEXT = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: papermill puts a banner cell at the top of a failed notebook; it is not the user's.
PAPERMILL_BANNER = "papermill-error-cell-tag"
#: How often the notebook papermill or nbconvert is writing is read back into the outputs.
SAVE_EVERY = 2.0


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """One line without ANSI colours or control characters, at most ``limit`` long."""
    text = _ANSI.sub("", str(text))
    text = "".join(ch if ch.isprintable() else " " for ch in text.replace("\n", " ")).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def typed(value: str):
    """papermill ``-p`` typing: True/False/None, an int, a float, else the string."""
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    if value == "None":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def source_of(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def tags_of(cell: dict) -> list:
    tags = (cell.get("metadata") or {}).get("tags") or []
    return tags if isinstance(tags, list) else []


def inject_parameters(nb: dict, params: dict) -> int | None:
    """Insert (or replace) the injected-parameters cell; returns its index, None if no params."""
    cells = [c for c in nb.get("cells", []) if INJECTED_TAG not in tags_of(c)]
    nb["cells"] = cells
    if not params:
        return None
    lines = ["# Parameters (injected by orch)"] + ["%s = %r" % (k, v) for k, v in params.items()]
    cell = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [INJECTED_TAG]},
            "outputs": [], "source": "\n".join(lines) + "\n"}
    if any("id" in c for c in cells):  # nbformat 4.5 gives every cell an id
        cell["id"] = INJECTED_TAG
    at = next((i + 1 for i, c in enumerate(cells) if "parameters" in tags_of(c)), 0)
    cells.insert(at, cell)
    return at


def first_error(nb: dict) -> dict | None:
    """The first cell with an error output: where it is, the line that raised, the exception."""
    cells = [c for c in nb.get("cells", []) if PAPERMILL_BANNER not in tags_of(c)]
    for index, cell in enumerate(cells):
        for out in cell.get("outputs") or []:
            if out.get("output_type") != "error":
                continue
            source = source_of(cell).splitlines()
            trace = "\n".join(_ANSI.sub("", str(t)) for t in out.get("traceback") or [])
            lines = [int(n) for n in re.findall(r"Cell In\s*\[\d*\], line (\d+)", trace)]
            line = lines[-1] if lines else None
            if line is None:  # older IPython: "----> 3 x = 1/0" marks the line
                arrows = re.findall(r"^-+>\s*(\d+)", trace, re.M)
                line = int(arrows[0]) if arrows else None
            text = source[line - 1] if line and 0 < line <= len(source) else (source[0] if source else "")
            return {"cell": index + 1, "execution_count": cell.get("execution_count"), "line": line,
                    "source_line": clean(text), "ename": clean(out.get("ename", "Error"), 100),
                    "evalue": clean(out.get("evalue", ""))}
    return None


def describe(failure: dict, notebook: str) -> str:
    """The one line shown in ``orch status``."""
    where = "%s cell %d" % (notebook, failure["cell"])
    if failure.get("line"):
        where += ", line %d" % failure["line"]
    code = " `%s`" % failure["source_line"] if failure.get("source_line") else ""
    what = failure["ename"] + (": " + failure["evalue"] if failure.get("evalue") else "")
    return clean("%s%s: %s" % (where, code, what), 500)


def extract_images(nb: dict, folder: str) -> list:
    """Write every image output as a file (``cell<N>_<k>.<ext>``); returns their names."""
    names = []
    for index, cell in enumerate(nb.get("cells", [])):
        k = 0
        for out in cell.get("outputs") or []:
            for mime, ext in IMAGE_MIMES.items():
                data = (out.get("data") or {}).get(mime)
                if data is None:
                    continue
                text = "".join(data) if isinstance(data, list) else str(data)
                k += 1
                name = "cell%d_%d.%s" % (index + 1, k, ext)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(text.encode() if ext == "svg" else base64.b64decode(text))
                names.append(name)
    return names


def scraps(nb: dict) -> dict:
    """Values the notebook recorded scrapbook-style (``sb.glue(name, value)``), JSON ones only."""
    found = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs") or []:
            scrap = (out.get("data") or {}).get(SCRAP_MIME)
            if isinstance(scrap, dict) and isinstance(scrap.get("name"), str):
                found[scrap["name"]] = scrap.get("data")
    return found


def read_metrics(out_dir: str) -> dict:
    """What the notebook itself wrote to ``metrics.json`` (kept beside its scraps)."""
    try:
        with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


# ---------------------------------------------------------------------------- secrets


def secret_masker():
    """A function that masks the job's secrets (and their encodings) in a string, or
    None when the job has none. The runner names them in ``$ORCH_SECRET_NAMES`` and
    its own ``MaskingTee`` (which masks ``job.log``) does the work, found through
    ``$ORCH_RUNNER`` (else ``runner.py`` beside this file): one set of encodings for
    the log and the executed notebook."""
    names = [n for n in os.environ.get("ORCH_SECRET_NAMES", "").split(",") if n]
    values = [os.environ[n] for n in names if os.environ.get(n)]
    if not values:
        return None
    path = os.environ.get("ORCH_RUNNER") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
    if not os.path.isfile(path):  # never run unmasked
        raise FileNotFoundError("cannot mask the job's secrets in the notebook: no runner.py at %s" % path)
    spec = importlib.util.spec_from_file_location("orch_runner", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    tee = runner.MaskingTee(None, None, values)
    return lambda text: tee.mask(text.encode("utf-8", "surrogatepass")).decode("utf-8", "replace")


def masked(doc, mask):
    """A copy of ``doc`` (a notebook, a failure) with ``mask`` applied to every string
    except binary image data (base64, which a secret's encodings could match by chance)."""
    if isinstance(doc, str):
        return mask(doc)
    if isinstance(doc, list):
        return [masked(v, mask) for v in doc]
    if isinstance(doc, dict):
        return {k: v if k in BINARY_MIMES else masked(v, mask) for k, v in doc.items()}
    return doc


def write_json(path: str, doc) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- executors


def find_executor(prefer: str | None) -> str | None:
    """The first of nbclient, papermill, nbconvert this Python can use (only ``prefer``
    when given)."""
    have = {
        "papermill": importlib.util.find_spec("papermill") is not None,
        "nbclient": importlib.util.find_spec("nbclient") is not None and importlib.util.find_spec("ipykernel") is not None,
        "nbconvert": importlib.util.find_spec("nbconvert") is not None,
    }
    if prefer:
        return prefer if have.get(prefer) else None
    return next((name for name in EXECUTORS if have[name]), None)


def install_nbclient(target: str) -> str | None:
    """``pip install --target`` nbclient + ipykernel next to the job, then use them;
    returns why that failed, or None."""
    print("[nbexec] no notebook executor on this host; installing nbclient and ipykernel", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-input", "--target", target, "nbclient", "ipykernel"])
    if done.returncode != 0:
        return "pip install nbclient ipykernel exited with %d" % done.returncode
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join([target] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return None if find_executor("nbclient") else "pip installed nbclient and ipykernel, but they do not import"


def pin_kernel(folder: str) -> None:
    """Make the ``python3`` kernel this interpreter: a kernelspec in ``folder``, first
    on ``$JUPYTER_PATH``, so that a ``python3`` kernelspec the host installed for another
    Python (``ipykernel install`` writes its absolute path) does not run the cells there,
    away from the job's ``setup:`` packages. Every executor reads it."""
    spec_dir = os.path.join(folder, "kernels", "python3")
    os.makedirs(spec_dir, exist_ok=True)
    write_json(os.path.join(spec_dir, "kernel.json"), {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python", "metadata": {"debugger": True}})
    os.environ["JUPYTER_PATH"] = os.pathsep.join([folder] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])


class Execution:
    """One run of the notebook; ``nb`` always holds the outputs as far as they got."""

    def __init__(self, nb: dict, out_path: str, cwd: str, deadline: float, cell_timeout: float | None,
                 mask=None) -> None:
        self.nb, self.out_path, self.cwd, self.mask = nb, out_path, cwd, mask
        self.deadline, self.cell_timeout = deadline, cell_timeout
        self.timed_out: dict | None = None
        self.stopped = False
        self.kernel_pid: int | None = None

    def timeout(self) -> int:
        left = self.deadline - time.time() + DEADLINE_MARGIN
        limit = min(left, self.cell_timeout) if self.cell_timeout else left
        return max(1, int(limit))

    def masked(self) -> dict:
        """The notebook as it may leave the host: secrets masked in every output."""
        return masked(self.nb, self.mask) if self.mask else self.nb

    def save(self) -> None:
        write_json(self.out_path, self.masked())

    def on_term(self, *_) -> None:
        """SIGTERM (deadline, session end, cancel): interrupt the running cell; the kernel
        raises KeyboardInterrupt there, so a notebook can save a checkpoint and stop."""
        self.stopped = True
        if self.kernel_pid:
            try:
                os.kill(self.kernel_pid, signal.SIGINT)
            except OSError:
                pass

    def run(self, executor: str) -> None:
        getattr(self, "_" + executor)()

    def _nbclient(self) -> None:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        node = nbformat.reads(json.dumps(self.nb), as_version=4)  # joins list sources
        self.nb = node
        current = {"index": 0}

        def started(cell, cell_index, **_):
            if self.stopped:
                raise Stopped()
            current["index"] = cell_index
            self.save()
            if self.kernel_pid is None:
                self.kernel_pid = _kernel_pid(client)

        client = NotebookClient(node, timeout=None, timeout_func=lambda cell: self.timeout(), kernel_name="python3",
                                resources={"metadata": {"path": self.cwd}}, on_cell_start=started,
                                on_cell_executed=lambda **_: self.save())
        try:
            client.execute()
        except Stopped:
            pass
        except CellTimeoutError:
            self.timed_out = {"cell": current["index"] + 1}
        except CellExecutionError:
            pass  # the error output is in the notebook; first_error() reads it
        except DeadKernelError as exc:
            self.timed_out = {"cell": current["index"] + 1, "dead": clean(exc)}

    def _papermill(self) -> None:
        self._subprocess(lambda path: [sys.executable, "-m", "papermill", "--cwd", self.cwd, "--log-output",
                                       "-k", "python3", "--execution-timeout", str(self.timeout()), path, path])

    def _nbconvert(self) -> None:
        self._subprocess(lambda path: [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                                       "--ExecutePreprocessor.timeout=%d" % self.timeout(), path])

    def _subprocess(self, command) -> None:
        """papermill and nbconvert read and write a notebook themselves: a private copy,
        not in the outputs, read back (and saved masked) every few seconds. It lies in the
        working directory, where nbconvert runs the kernel, as a hidden file, which no
        ``outputs:`` glob matches."""
        work = os.path.join(self.cwd, ".%s.orch-run.ipynb" % os.path.splitext(os.path.basename(self.out_path))[0])
        write_json(work, self.nb)
        self.save()
        proc = subprocess.Popen(command(work), cwd=self.cwd)
        self.kernel_pid = None
        signal.signal(signal.SIGTERM, lambda *_: (setattr(self, "stopped", True), proc.send_signal(signal.SIGTERM)))
        try:
            while True:
                try:
                    code = proc.wait(timeout=SAVE_EVERY)
                    break
                except subprocess.TimeoutExpired:
                    self._read_back(work)
            self._read_back(work)
        finally:
            try:
                os.unlink(work)
            except OSError:
                pass
        if code != 0 and first_error(self.nb) is None:
            self.timed_out = {"cell": None, "exit": code}

    def _read_back(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                self.nb = json.load(f)
        except (OSError, ValueError):  # not written yet, or being written
            return
        self.save()


class Stopped(Exception):
    """SIGTERM came: run no further cell."""


def _kernel_pid(client) -> int | None:
    try:
        return client.km.provisioner.process.pid
    except AttributeError:
        return None


# ---------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebook")
    p.add_argument("--param", action="append", default=[], metavar="NAME",
                   help="a parameter whose value is read from the environment variable NAME")
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS")
    p.add_argument("--executor", choices=EXECUTORS, default=None, help="use this one, or fail")
    p.add_argument("--no-install", action="store_true", help="never pip-install an executor")
    return p.parse_args(argv)


def stopped_failure(run, notebook: str) -> tuple:
    """(failure record, one-line message) of a run that timed out, was stopped, or whose
    kernel or executor died."""
    cell = run.timed_out.get("cell")
    source = source_of(run.nb["cells"][cell - 1]).splitlines() if cell else []
    line = clean(next((s for s in source if s.strip()), ""))
    if run.stopped:
        what = "stopped (SIGTERM)"
    elif run.timed_out.get("dead"):
        what = "the kernel died: " + run.timed_out["dead"]
    elif cell:
        what = "timed out after %ds" % run.timeout()
    else:
        what = "the executor exited with code %s" % run.timed_out.get("exit")
    where = "%s cell %d `%s`" % (notebook, cell, line) if cell else notebook
    kind = "Timeout" if "timed out" in what else "Stopped" if run.stopped else "ExecutorFailed"
    return ({"cell": cell, "source_line": line, "ename": kind, "evalue": what},
            clean("%s: %s" % (where, what), 500))


def main(argv=None) -> int:
    args = parse_args(argv)
    cwd = os.getcwd()
    out_dir = os.environ.get("ORCH_OUTPUT_DIR") or os.path.join(cwd, "out")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.notebook))[0]
    out_path = os.path.join(out_dir, stem + ".ipynb")
    failure_file = os.environ.get("ORCH_FAILURE_FILE")
    deadline = float(os.environ.get("ORCH_DEADLINE") or time.time() + 86400)
    mask = None

    def fail(failure: dict, message: str) -> int:
        print("[nbexec] " + message, flush=True)
        if failure_file:
            doc = {"message": message, "notebook": args.notebook, **failure}
            write_json(failure_file, masked(doc, mask) if mask else doc)
        return 1

    try:
        mask = secret_masker()
    except FileNotFoundError as exc:
        return fail({"ename": "NoMasking", "evalue": ""}, str(exc))
    with open(args.notebook, encoding="utf-8") as f:
        nb = json.load(f)
    params = {name: typed(os.environ[name]) for name in args.param if name in os.environ}
    at = inject_parameters(nb, params)
    if at is not None:
        print("[nbexec] parameters injected as cell %d: %s" % (at + 1, ", ".join("%s=%r" % kv for kv in params.items())),
              flush=True)

    executor, problem = find_executor(args.executor), None
    if executor is None and not args.executor and not args.no_install:
        problem = install_nbclient(os.path.join(os.path.dirname(cwd), "nbdeps"))
        executor = None if problem else "nbclient"
    run = Execution(nb, out_path, cwd, deadline, args.cell_timeout, mask)
    if executor is None:
        run.save()
        wanted = args.executor or "papermill, nbclient+ipykernel or nbconvert"
        return fail({"ename": "NoExecutor", "evalue": problem or ""},
                    "no notebook executor for %s (%s)%s; add nbclient and ipykernel to the job's setup:"
                    % (sys.executable, wanted, "; " + problem if problem else ""))
    print("[nbexec] executing %s with %s (%s)" % (args.notebook, executor, sys.executable), flush=True)
    kernel_dir = tempfile.mkdtemp(prefix="nbexec-kernel-")
    if importlib.util.find_spec("ipykernel") is not None:  # else papermill/nbconvert use the host's kernelspec
        pin_kernel(kernel_dir)
    signal.signal(signal.SIGTERM, run.on_term)
    try:
        run.run(executor)
    finally:
        run.nb = run.masked()  # what follows (images, scraps, the failure) reads the masked notebook
        run.save()
        images = extract_images(run.nb, os.path.join(out_dir, stem + "_images"))
        recorded = scraps(run.nb)
        if recorded:
            write_json(os.path.join(out_dir, "metrics.json"), {**read_metrics(out_dir), **recorded})
        print("[nbexec] executed notebook: %s (%d images)" % (os.path.basename(out_path), len(images)), flush=True)
        shutil.rmtree(kernel_dir, ignore_errors=True)
    if run.timed_out:  # before first_error: a timed-out cell also shows the interrupt it got
        return fail(*stopped_failure(run, args.notebook))
    failure = first_error(run.nb)
    if failure:
        return fail(failure, describe(failure, args.notebook))
    return 143 if run.stopped else 0


if __name__ == "__main__":
    sys.exit(main())
