"""Notebooks as jobs: ``run: x.ipynb`` and ``orch submit x.ipynb``, executed for real
(nbclient + ipykernel) by the runner on the local platform."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import notebooks, spec
from orchestrator.errors import SpecError
from tests.conftest import REPO, make_job, submit, submitted, tick_until
from tests.notebook_helpers import cells_of, code, markdown, text_of, write_notebook

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TRAIN = [
    markdown("# Train\nA tiny parameterised notebook."),
    code("LR = 0.5\nEPOCHS = 1\nNAME = 'default'", "parameters"),
    code("import os\nloss = round(1.0 / (LR * EPOCHS), 4)\nprint('loss', loss, NAME)"),
    code("import json\njson.dump({'loss': loss}, open(os.path.join(os.environ['ORCH_OUTPUT_DIR'], 'metrics.json'), 'w'))"),
    code("from IPython.display import display  # what scrapbook's sb.glue('epochs', EPOCHS) displays\n"
         "display({'application/scrapbook.scrap.json+json': {'name': 'epochs', 'data': EPOCHS, 'encoder': 'json',"
         " 'version': 1}}, raw=True)"),
]


def finished(job_id: str, timeout: float = 120):
    return tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=timeout, interval=0.2)


def run_notebook(orch, tmp_path: Path, cells: list[dict], yaml: str, timeout: float = 120):
    """Write ``cells`` as the notebook ``yaml``'s ``run:`` names, submit, tick to the end: (job id, app, job)."""
    run = next(line for line in yaml.splitlines() if line.startswith("run: "))
    write_notebook(tmp_path / "job" / run.split()[1], cells)
    job_id = submit(orch, make_job(tmp_path / "job", yaml))
    app = finished(job_id, timeout=timeout)
    return job_id, app, app.store.job(job_id)


def fetch(orch, job_id: str, dest: Path) -> Path:
    result = orch("fetch", job_id, "-o", str(dest))
    assert result.exit_code == 0, result.output
    return dest


def test_a_parameterised_notebook_runs_on_local_and_the_executed_notebook_comes_back(orch, config, tmp_path):
    config("platforms:\n  local: {type: local}\n")
    write_notebook(tmp_path / "job" / "train.ipynb", TRAIN)
    path = make_job(tmp_path / "job", """\
        name: nb
        run: train.ipynb EPOCHS=4 NAME=run-a
        params: {LR: 0.25}
        """)
    job_id = submit(orch, path)
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    out = fetch(orch, job_id, tmp_path / "out")
    cells = cells_of(out / "outputs" / "train.ipynb")
    injected = cells[2]
    assert injected["metadata"]["tags"] == ["injected-parameters"]
    assert "".join(injected["source"]).splitlines()[1:] == ["LR = 0.25", "EPOCHS = 4", "NAME = 'run-a'"]
    assert text_of(cells[3]) == "loss 1.0 run-a\n"  # typed: 1 / (0.25 * 4)
    assert json.loads((out / "outputs" / "metrics.json").read_text()) == {"loss": 1.0, "epochs": 4}
    assert "executing train.ipynb with nbclient" in (out / "job.log").read_text()


def test_a_failing_cell_fails_the_job_with_the_cell_its_line_and_the_exception_and_the_partial_notebook_comes_back(
        orch, config, tmp_path):
    config("platforms:\n  local: {type: local}\n")
    job_id, app, job = run_notebook(orch, tmp_path, [
        code("x = 1\nprint('before')"),
        code("y = 2\nz = y / (x - 1)\nprint('never')"),
        code("print('not run')"),
    ], "run: bad.ipynb\n")
    assert job.state.value == "FAILED"
    message = "bad.ipynb cell 2, line 2 `z = y / (x - 1)`: ZeroDivisionError: division by zero"
    assert job.message == message
    status = json.loads(orch("status", job_id, "--json").output)
    assert status["message"] == message
    shown = orch("status", job_id).output  # the state line and the attempt's row (wrapped at 80 columns here)
    assert " ".join(shown.split()).count(message) >= 2, shown
    assert "bad.ipynb cell 2, l" in orch("status").output  # the list's NOTE column starts with it
    out = fetch(orch, job_id, tmp_path / "out")
    result = json.loads((out / "result.json").read_text())
    assert result["message"] == message and result["failure_class"] == "user"
    assert result["failure"] == {"message": message, "notebook": "bad.ipynb", "cell": 2, "execution_count": 2,
                                 "line": 2, "source_line": "z = y / (x - 1)", "ename": "ZeroDivisionError",
                                 "evalue": "division by zero"}
    cells = cells_of(out / "outputs" / "bad.ipynb")
    assert text_of(cells[0]) == "before\n"
    assert cells[1]["outputs"][0]["output_type"] == "error"
    assert cells[2]["outputs"] == [] and cells[2]["execution_count"] is None


def test_shell_escapes_and_magics_run_and_images_come_back_as_files(orch, config, tmp_path):
    config("platforms:\n  local: {type: local}\n")
    job_id, app, job = run_notebook(orch, tmp_path, [
        code("!echo from-the-shell\n!pip --version > pip.txt\n%env MAGIC=yes\nimport os\nprint(os.environ['MAGIC'])"),
        code("%%time\ntotal = sum(range(1000))"),
        code("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"),
    ], "run: magic.ipynb\noutputs: [pip.txt]\n")
    assert job.state.value == "SUCCEEDED", job.message
    out = fetch(orch, job_id, tmp_path / "out")
    cells = cells_of(out / "outputs" / "magic.ipynb")
    assert "from-the-shell" in text_of(cells[0]) and "yes" in text_of(cells[0])
    assert "Wall time" in text_of(cells[1])
    assert (out / "outputs" / "pip.txt").read_text().startswith("pip ")
    png = out / "outputs" / "magic_images" / "cell3_1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_past_its_timeout_fails_the_job_naming_the_cell(orch, config, tmp_path):
    config("platforms:\n  local: {type: local}\n")
    _, _, job = run_notebook(orch, tmp_path, [code("print('quick')"), code("import time\ntime.sleep(60)")],
                             "run: slow.ipynb --cell-timeout 3s\n")
    assert job.state.value == "FAILED"
    assert job.message == "slow.ipynb cell 2 `import time`: timed out after 3s"


def test_the_notebook_demo_runs_as_a_three_point_sweep_and_the_summary_has_what_each_point_recorded(
        orch, config, tmp_path):
    pytest.importorskip("matplotlib")
    config("platforms:\n  local: {type: local, max_concurrent: 3}\n")
    shutil.copytree(REPO / "jobs" / "notebook-demo", tmp_path / "demo")
    doc = submitted(orch, tmp_path / "demo" / "job.yaml")
    assert len(doc["jobs"]) == 3
    tick_until(lambda app: all(app.store.job(j).state.terminal for j in doc["jobs"]), timeout=240)
    out = tmp_path / "out"
    assert orch("fetch", doc["sweep_id"], "-o", str(out)).exit_code == 0
    for i, degree in enumerate(["1", "3", "5"]):
        point = out / f"notebook-demo-{i}" / "outputs"
        injected = cells_of(point / "fit.ipynb")[2]
        assert "".join(injected["source"]).splitlines()[1:] == ["NOISE = 0.2", f"DEGREE = {degree}"]
        assert (point / "fit_images" / "cell5_1.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["DEGREE"], r["state"], r["degree"]) for r in rows] == [
        ("1", "SUCCEEDED", "1"), ("3", "SUCCEEDED", "3"), ("5", "SUCCEEDED", "5")]
    rmse = [float(r["rmse"]) for r in rows]
    assert rmse[1] < rmse[0], "a cubic fits a sine better than a line"


RESUMABLE = [
    code("STEPS = 12\nSTEP_SECONDS = 1.0", "parameters"),  # 12 s of work: more than one 10.8 s session
    code("import json, os\n"
         "CKPT = os.path.join(os.environ.get('ORCH_CHECKPOINT_DIR', 'ckpt'), 'state.json')\n"
         "def save(state):\n"
         "    os.makedirs(os.path.dirname(CKPT), exist_ok=True)\n"
         "    json.dump(state, open(CKPT + '.tmp', 'w'))\n"
         "    os.replace(CKPT + '.tmp', CKPT)\n"
         "state = json.load(open(CKPT)) if os.path.exists(CKPT) else {'step': 0, 'total': 0, 'segments': 0}\n"
         "state['segments'] += 1\n"
         "print('resuming at step', state['step'])"),
    code("import time\n"
         "try:\n"
         "    while state['step'] < STEPS:\n"
         "        time.sleep(STEP_SECONDS)\n"
         "        state['total'] += state['step']\n"
         "        state['step'] += 1\n"
         "        save(state)\n"
         "except KeyboardInterrupt:  # orch interrupts the cell when the session ends\n"
         "    save(state)"),
    code("json.dump(state, open(os.path.join(os.environ['ORCH_OUTPUT_DIR'], 'final.json'), 'w'))"),
]


def test_a_notebook_that_saves_and_resumes_its_state_runs_as_a_checkpoint_chain(orch, config, tmp_path):
    config("platforms:\n  local: {type: local, session_hours: 0.003, min_segment: 3s}\n")  # 10.8 s sessions
    job_id, app, job = run_notebook(orch, tmp_path, RESUMABLE, "run: resume.ipynb\ncheckpoint: ckpt\ngrace: 2s\n"
                                    "resources: {max_runtime: 3m}\n", timeout=180)
    assert job.state.value == "SUCCEEDED", job.message
    states = [a.state.value for a in app.store.attempts_of(job_id)]
    assert states[-1] == "SUCCEEDED" and "CHECKPOINTED" in states
    out = fetch(orch, job_id, tmp_path / "out")
    final = json.loads((out / "outputs" / "final.json").read_text())
    assert final["step"] == 12 and final["total"] == sum(range(12)), "no step lost or repeated"
    assert final["segments"] == len(states)


def test_submit_a_notebook_with_no_job_yaml_takes_its_spec_from_the_notebook_metadata(orch, config, tmp_path):
    config("platforms:\n  local: {type: local}\n")
    (tmp_path / "nb" / "data").mkdir(parents=True)
    (tmp_path / "nb" / "data" / "rows.csv").write_text("a\n1\n2\n")
    write_notebook(tmp_path / "nb" / "My Analysis.ipynb", [
        code("ROWS_FILE = 'rows.csv'", "parameters"),
        code("import os\nrows = open(os.path.join(os.environ['ORCH_DATA'], 'data', ROWS_FILE)).read().split()\n"
             "open('count.txt', 'w').write(str(len(rows)))"),
    ], orch={"resources": {"max_runtime": "10m"}, "datasets": [{"path": "data"}], "outputs": ["count.txt"],
             "params": {"ROWS_FILE": "rows.csv"}})
    loaded = spec.load(tmp_path / "nb" / "My Analysis.ipynb")
    assert loaded.name == "My-Analysis" and loaded.resources.max_runtime == 600
    assert notebooks.notebook_of(loaded) == "My Analysis.ipynb"
    job_id = submit(orch, tmp_path / "nb" / "My Analysis.ipynb")
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    out = fetch(orch, job_id, tmp_path / "out")
    assert (out / "outputs" / "count.txt").read_text() == "3"
    assert (out / "outputs" / "My Analysis.ipynb").is_file()


@pytest.mark.parametrize("orch_meta, expected", [
    ({"resources": {"gpu": "T5"}}, "x.ipynb: metadata.orch.resources.gpu: unknown GPU type 'T5'"),
    ({"run": "python x.py"}, "x.ipynb: metadata.orch.run: a notebook submitted alone runs itself"),
    ({"resorces": {}}, "x.ipynb: unknown key 'resorces' — did you mean 'resources'?"),
    ("gpu", "x.ipynb: metadata.orch: expected a mapping of job.yaml keys"),
])
def test_bad_notebook_metadata_is_one_line_naming_the_field(tmp_path, orch_meta, expected):
    path = write_notebook(tmp_path / "x.ipynb", [code("1")], orch=orch_meta)
    with pytest.raises(SpecError) as err:
        spec.load(path)
    assert str(err.value).startswith(str(tmp_path / expected.split(":")[0]) + ":" + expected.split(":", 1)[1])


@pytest.mark.parametrize("run, notebook, expected", [
    ("missing.ipynb", None, "notebook '"),
    ("bad.ipynb", "{not json", "bad.ipynb is not a notebook (JSONDecodeError"),
    ("x.ipynb LR", "ok", "'LR' after the notebook is not NAME=value, --cell-timeout DURATION or --executor"),
    ("x.ipynb class=1", "ok", "parameter 'class' must be a Python name"),
    ("x.ipynb --cell-timeout 10", "ok", "--cell-timeout 10: '10' is not a duration"),
    ("../x.ipynb", "ok", "must lie inside the code directory"),
])
def test_a_bad_notebook_run_is_refused_at_submit_with_one_line(orch, config, tmp_path, run, notebook, expected):
    config("platforms:\n  local: {type: local}\n")
    job = tmp_path / "job"
    if notebook == "ok":
        write_notebook(job / "x.ipynb", [code("1")])
        write_notebook(tmp_path / "x.ipynb", [code("1")])
    elif notebook:
        job.mkdir()
        (job / run).write_text(notebook)
    result = orch("submit", str(make_job(job, f"run: {run}\n")))
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_params_on_a_command_job_is_refused(tmp_path):
    with pytest.raises(SpecError, match="params: is for notebook jobs"):
        spec.load(make_job(tmp_path / "j", "run: python x.py\nparams: {A: 1}\n"))


def test_internet_false_with_no_executor_anywhere_is_refused_at_submit(orch, config, tmp_path, monkeypatch):
    config("platforms:\n  local: {type: local}\n")
    write_notebook(tmp_path / "job" / "x.ipynb", [code("1")])
    path = make_job(tmp_path / "job", "run: x.ipynb\ninternet: false\n")
    # A Python without executors: hide them from the import system (orch's code is unpatched).
    hidden, real = {"papermill", "nbclient", "ipykernel", "nbconvert"}, importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    result = orch("submit", str(path))
    assert result.exit_code == 2
    assert "internet: false and no notebook executor where this job may run (local:" in result.output
    assert "pip install 'orch[notebooks]'" in result.output
    # With the executor among its requirements, the job brings its own.
    path.write_text("run: x.ipynb\ninternet: false\nsetup: [nbclient, ipykernel]\n")
    assert orch("submit", str(path), "--dry-run").exit_code == 0


@pytest.mark.parametrize("executor", ["nbclient", "papermill"])
def test_every_executor_gives_the_same_failure_and_the_partial_notebook(executor, tmp_path):
    if executor == "papermill":
        pytest.importorskip("papermill")
    nb = write_notebook(tmp_path / "bad.ipynb", [code("N = 1", "parameters"), code("print('n', N)"),
                                                 code("import json\njson.loads('{oops')"), code("print('not run')")])
    env = {**os.environ, "N": "7", "ORCH_OUTPUT_DIR": str(tmp_path / "out"),
           "ORCH_FAILURE_FILE": str(tmp_path / "failure.json")}
    done = subprocess.run([sys.executable, str(notebooks.executor_script()), nb.name, "--param", "N",
                           "--executor", executor], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["message"] == "bad.ipynb cell 4, line 2 `json.loads('{oops')`: JSONDecodeError: Expecting " \
                                 "property name enclosed in double quotes: line 1 column 2 (char 1)"
    cells = [c for c in cells_of(tmp_path / "out" / "bad.ipynb") if "papermill-error-cell-tag" not in c["metadata"].get("tags", [])]
    assert text_of(cells[2]) == "n 7\n"
    assert cells[3]["outputs"][-1]["ename"] == "JSONDecodeError" and not cells[4]["outputs"]


SECRET = "nb-s3cr3t-Value-71d0"


def test_secrets_a_notebook_prints_are_masked_in_the_executed_notebook_and_its_failure(
        orch, config, orch_home, tmp_path, monkeypatch):
    import base64

    from tests.test_secrets import all_bytes_under

    config("platforms:\n  local: {type: local}\n")
    monkeypatch.setenv("NB_TOKEN", SECRET)
    job_id, app, job = run_notebook(orch, tmp_path, [
        code("import base64, os\nTOKEN = os.environ['NB_TOKEN']\nprint('token is', TOKEN)\nTOKEN"),
        code("print(base64.b64encode(TOKEN.encode()).decode(), TOKEN.encode().hex())\n"
             "from IPython.display import HTML, display\ndisplay(HTML('<b>' + TOKEN + '</b>'))"),
        code("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"),
        code("raise ValueError('bad token ' + TOKEN)"),
    ], "run: leak.ipynb\nsecrets: [NB_TOKEN]\n")
    assert job.state.value == "FAILED"
    assert job.message == "leak.ipynb cell 4, line 1 `raise ValueError('bad token ' + TOKEN)`: ValueError: bad token ***"
    out = fetch(orch, job_id, tmp_path / "out")
    cells = cells_of(out / "outputs" / "leak.ipynb")
    assert text_of(cells[0]) == "token is ***\n'***'"
    assert text_of(cells[1]).startswith("***") and " ***\n" in text_of(cells[1])  # as in job.log: base64, hex
    assert cells[1]["outputs"][1]["data"]["text/html"] == "<b>***</b>"
    assert (out / "outputs" / "leak_images" / "cell3_1.png").read_bytes()[:4] == b"\x89PNG", "images are untouched"
    assert cells[3]["outputs"][0]["evalue"] == "bad token ***"
    forms = [SECRET, base64.b64encode(SECRET.encode()).decode(), SECRET.encode().hex()]
    everything = all_bytes_under(orch_home) + all_bytes_under(out)  # attempt dirs, outputs, result.json, the log
    assert not [f for f in forms if f.encode() in everything]


def notebook_bundle(tmp: Path, yaml: str, cells: list[dict]):
    """A bundle of one notebook job, with the executor orch adds (as ``orch submit`` builds it)."""
    from orchestrator import bundle

    write_notebook(tmp / "code" / "nb.ipynb", cells)
    (tmp / "code" / "job.yaml").write_text(yaml)
    loaded = spec.load(tmp / "code" / "job.yaml")
    return bundle.build(loaded, tmp / "bundles", bundle.DatasetCache(tmp / "blobs", tmp / "index"),
                        extra_files=notebooks.bundle_files(loaded))


def test_the_executor_and_its_kernel_run_with_the_runners_python_not_the_first_python3_on_path(tmp_path):
    from tests.test_runner import run_runner

    # A host with two Pythons: the runner's, reachable only as .../real/interp (no python3 beside it),
    # and a broken python3 first on PATH, whose kernelspec is also the host's python3 kernel.
    real = tmp_path / "real"
    real.mkdir()
    (real / "interp").symlink_to(os.path.realpath(sys.executable))
    other = tmp_path / "other"
    other.mkdir()
    (other / "python3").write_text("#!/bin/sh\necho \"the other python3: $*\" >&2\nexit 97\n")
    (other / "python3").chmod(0o755)
    (tmp_path / "jupyter" / "kernels" / "python3").mkdir(parents=True)
    (tmp_path / "jupyter" / "kernels" / "python3" / "kernel.json").write_text(json.dumps(
        {"argv": [str(other / "python3"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "other", "language": "python"}))
    bun = notebook_bundle(tmp_path, "run: nb.ipynb\n", [code("import sys\nprint(sys.executable)")])
    env = {"PATH": f"{other}{os.pathsep}{os.environ['PATH']}", "JUPYTER_PATH": str(tmp_path / "jupyter")}
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "120", env=env, python=str(real / "interp"), timeout=150)
    assert result, proc.stdout + proc.stderr
    log = (tmp_path / "attempt" / "job.log").read_text()
    assert result["status"] == "succeeded", log
    assert f"with nbclient ({real / 'interp'})" in log and "the other python3" not in log
    import tarfile

    with tarfile.open(tmp_path / "attempt" / "outputs.tar.gz") as tar:
        executed = json.load(tar.extractfile("nb.ipynb"))
    assert text_of(executed["cells"][0]) == f"{real / 'interp'}\n", "the cells ran in the runner's Python too"


#: A pip stand-in for a host with no notebook executor: it records its argv, then
#: "installs" into --target by linking what this machine's site-packages hold there (the
#: layout ``pip install --target`` gives), since tests do not download packages.
FAKE_PIP = """\
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_PIP_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_PIP_EXIT"):
    sys.exit(int(os.environ["FAKE_PIP_EXIT"]))
target = args[args.index("--target") + 1]
os.makedirs(target, exist_ok=True)
for site in json.loads(os.environ["FAKE_PIP_FROM"]):
    for name in os.listdir(site):
        if not os.path.exists(os.path.join(target, name)):
            os.symlink(os.path.join(site, name), os.path.join(target, name))
"""


@pytest.fixture
def bare_python(tmp_path):
    """A venv with neither nbclient nor pip, and the pip stand-in on its PYTHONPATH: (python, env)."""
    import site
    import venv

    venv.create(tmp_path / "venv", with_pip=False, symlinks=True)
    python = tmp_path / "venv" / "bin" / "python"
    (tmp_path / "fakepip" / "pip").mkdir(parents=True)
    (tmp_path / "fakepip" / "pip" / "__init__.py").write_text("")
    (tmp_path / "fakepip" / "pip" / "__main__.py").write_text(FAKE_PIP)
    missing = subprocess.run([str(python), "-c", "import nbclient"], capture_output=True)
    assert missing.returncode != 0, "the venv must not see this machine's nbclient"
    return str(python), {"PYTHONPATH": str(tmp_path / "fakepip"), "FAKE_PIP_LOG": str(tmp_path / "pip.log"),
                         "FAKE_PIP_FROM": json.dumps(site.getsitepackages())}


def pip_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "pip.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_with_no_executor_and_internet_nbexec_pip_installs_nbclient_next_to_the_job_and_runs(tmp_path, bare_python):
    from tests.test_runner import run_runner

    python, env = bare_python
    bun = notebook_bundle(tmp_path, "run: nb.ipynb X=2\n", [
        code("X = 1", "parameters"), code("import ipykernel\nprint(X * 21, ipykernel.__file__)")])
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "120", env=env, python=python, timeout=150)
    log = (tmp_path / "attempt" / "job.log").read_text()
    assert result["status"] == "succeeded", log
    assert "no notebook executor on this host; installing nbclient and ipykernel" in log
    [argv] = pip_calls(tmp_path)
    target = Path(argv[argv.index("--target") + 1])
    assert argv == ["install", "--quiet", "--disable-pip-version-check", "--no-input", "--target", str(target),
                    "nbclient", "ipykernel"]
    assert target.name == "nbdeps" and target.is_dir()
    code_dir = next((tmp_path / "attempt").rglob(".orch")).parent
    assert target.parent == code_dir.parent, "next to the job's code, not in it (nor in the outputs)"
    import tarfile

    with tarfile.open(tmp_path / "attempt" / "outputs.tar.gz") as tar:
        assert tar.getnames() == ["nb.ipynb"]
        cells = json.load(tar.extractfile("nb.ipynb"))["cells"]
    assert text_of(cells[2]) == f"42 {target / 'ipykernel' / '__init__.py'}\n", "the kernel imports what pip put there"


@pytest.mark.parametrize("internet, pip_exit, expected", [
    (False, None, "no notebook executor for {python} (papermill, nbclient+ipykernel or nbconvert); add nbclient"),
    (True, "3", "no notebook executor for {python} (papermill, nbclient+ipykernel or nbconvert); "
                "pip install nbclient ipykernel exited with 3; add nbclient"),
])
def test_with_no_executor_nbexec_installs_only_with_internet_and_a_failed_install_is_one_line(
        tmp_path, bare_python, internet, pip_exit, expected):
    from tests.test_runner import run_runner

    python, env = bare_python
    bun = notebook_bundle(tmp_path, f"run: nb.ipynb\ninternet: {str(internet).lower()}\n", [code("print(1)")])
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "60", env={**env, "FAKE_PIP_EXIT": pip_exit or ""},
                              python=python)
    assert result["status"] == "failed" and result["failure_class"] == "user"
    assert result["message"].startswith(expected.format(python=python)), result["message"]
    assert result["failure"]["ename"] == "NoExecutor"
    assert len(pip_calls(tmp_path)) == (1 if internet else 0)


def test_the_nbconvert_executor_runs_the_notebook_in_the_working_directory_and_a_failure_names_the_executor(tmp_path):
    pytest.importorskip("nbconvert", reason="pip install nbconvert to test the nbconvert executor")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "rows.txt").write_text("a\nb\nc\n")
    nb = write_notebook(tmp_path / "code" / "nb.ipynb", [
        code("N = 1", "parameters"), code("print(N, len(open('rows.txt').read().split()))")])
    write_notebook(tmp_path / "code" / "bad.ipynb", [code("print('ran')"), code("1 / 0"), code("print('not run')")])

    def nbexec(notebook: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "N": "5", "ORCH_OUTPUT_DIR": str(tmp_path / "out"),
               "ORCH_FAILURE_FILE": str(tmp_path / "failure.json")}
        return subprocess.run([sys.executable, str(notebooks.executor_script()), notebook, "--param", "N",
                               "--executor", "nbconvert"], cwd=nb.parent, env=env, capture_output=True, text=True,
                              timeout=120)

    done = nbexec("nb.ipynb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "executing nb.ipynb with nbconvert" in done.stdout
    assert text_of(cells_of(tmp_path / "out" / "nb.ipynb")[2]) == "5 3\n", "parameters injected, cwd is the code"
    done = nbexec("bad.ipynb")
    assert done.returncode == 1
    failure = json.loads((tmp_path / "failure.json").read_text())
    # nbconvert writes nothing when a cell fails: the notebook comes back as submitted, and no cell is named.
    assert failure["message"] == "bad.ipynb: the executor exited with code 1"
    assert [c["outputs"] for c in cells_of(tmp_path / "out" / "bad.ipynb")] == [[], [], [], []]  # N injected
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == ["bad.ipynb", "nb.ipynb", "rows.txt"], \
        "its private copy is gone"


@pytest.mark.parametrize("executor", ["papermill", "nbconvert"])
def test_executors_that_write_the_notebook_themselves_bring_it_back_masked(executor, tmp_path):
    pytest.importorskip(executor, reason=f"pip install {executor} to test the {executor} executor")
    nb = write_notebook(tmp_path / "code" / "leak.ipynb", [code("import os\nprint('token', os.environ['NB_TOKEN'])")])
    env = {**os.environ, "NB_TOKEN": SECRET, "ORCH_SECRET_NAMES": "NB_TOKEN", "ORCH_OUTPUT_DIR": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, str(notebooks.executor_script()), nb.name, "--executor", executor],
                          cwd=nb.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    executed = (tmp_path / "out" / "leak.ipynb").read_text()
    assert SECRET not in executed and text_of(json.loads(executed)["cells"][0]) == "token ***\n"
    assert [p.name for p in nb.parent.iterdir()] == ["leak.ipynb"], "the unmasked working copy is gone"


def test_with_secrets_and_no_runner_to_mask_them_nbexec_runs_nothing(tmp_path):
    nb = write_notebook(tmp_path / "leak.ipynb", [code("print('ran')")])
    env = {**os.environ, "NB_TOKEN": SECRET, "ORCH_SECRET_NAMES": "NB_TOKEN", "ORCH_RUNNER": str(tmp_path / "gone.py"),
           "ORCH_OUTPUT_DIR": str(tmp_path / "out"), "ORCH_FAILURE_FILE": str(tmp_path / "failure.json")}
    done = subprocess.run([sys.executable, str(notebooks.executor_script()), nb.name], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert json.loads((tmp_path / "failure.json").read_text())["message"] == \
        f"cannot mask the job's secrets in the notebook: no runner.py at {tmp_path / 'gone.py'}"
    assert not (tmp_path / "out" / "leak.ipynb").exists()
