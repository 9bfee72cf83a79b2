"""ColabDrivePlatform rules: tier, secrets, agent choice, refusal, cancel, logs, the notebook, sign-in."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import nbformat
import pytest

from orchestrator import bundle as bundle_mod, spec as spec_mod
from orchestrator.app import App
from orchestrator.errors import CapacityError, PrecheckError
from orchestrator.platforms.base import Launch, RemoteState
from orchestrator.states import AttemptState, JobState
from tests.conftest import make_job, orch_process, tick_until, wait_until
from tests.platforms.colab_drive.conftest import REPO
from tests.platforms.colab_drive.test_e2e import _attempts, _job, _state, _submit


def _platform(app: App):
    return app.platform("gdrive")


def _launch(app: App, tmp_path: Path, key: str, yaml_text: str, secrets: dict | None = None) -> Launch:
    path = make_job(tmp_path / key, yaml_text, {"main.py": "print('hi')\n"})
    spec = spec_mod.load(path)
    bundle = bundle_mod.build(spec, app.home.bundles, bundle_mod.DatasetCache(app.home.blobs, app.home.index))
    return Launch(key=key, job_id=key, job_name=key, attempt=1, spec=spec, bundle=bundle,
                  max_runtime_s=spec.resources.max_runtime, secrets=secrets or {})


def _fake_agent(app: App, agent_id: str, gpu: str, memory_mb: int, time_left: int, state: str = "idle") -> str:
    """Write an agent's inbox and heartbeat the way kernels/colab_agent.py does."""
    mb = _platform(app).mailbox()
    agents = mb.t.folder("agents", mb.root)["id"]
    folder = mb.t.folder(agent_id, agents)["id"]
    inbox = mb.t.folder("inbox", folder)["id"]
    props = {"orch_kind": "heartbeat", "orch_agent": agent_id, "orch_root": mb.root, "orch_inbox": inbox,
             "orch_state": state, "orch_time_left": str(time_left), "orch_job": "", "orch_gpu": gpu,
             "orch_gpu_mb": str(memory_mb), "orch_gpu_count": "1"}
    mb.t.put_bytes(b"{}", name="heartbeat.json", parent=folder, properties=props)
    return inbox


@pytest.fixture
def app(gdrive, orch_home):
    app = App.open()
    yield app
    app.close()


def test_free_tier_is_refused_with_the_reason(orch, gdrive, orch_home):
    text = (orch_home / "config.yaml").read_text().replace("tier: pro", "tier: free")
    (orch_home / "config.yaml").write_text(text)

    (platform,) = json.loads(orch("platforms", "--json").output)
    notebook = orch("colab", "agent-notebook", "gdrive")

    assert not platform["available"] and "distributed-computing workers on free runtimes" in platform["reason"]
    assert notebook.exit_code == 2 and "platforms.gdrive.tier:" in notebook.output
    assert "Traceback" not in notebook.output and gdrive.count("list") == 0  # nothing touched Drive


def test_a_job_with_secrets_is_never_sent_through_drive(app, tmp_path):
    _fake_agent(app, "a1", "Tesla T4", 15360, 3600)
    launch = _launch(app, tmp_path, "osecret1-1", "run: python3 main.py\nsecrets: [TOKEN]\n", {"TOKEN": "x"})
    with pytest.raises(PrecheckError, match="keep secrets in a Drive file"):
        _platform(app).submit(launch)
    assert "secrets" in _platform(app).offer().unsupported


def test_submit_picks_the_idle_agent_with_the_right_gpu_and_the_least_time_that_fits(app, gdrive, tmp_path):
    launches = [_launch(app, tmp_path, key, f"run: x\nresources: {{gpu: {gpu}, max_runtime: {runtime}}}\n")
                for key, gpu, runtime in [("oshort01-1", "T4", "2m"), ("olong001-1", "T4", "1h"),
                                          ("obig0001-1", "A100", "1h"), ("omore001-1", "T4", "2m")]]
    t4_short = _fake_agent(app, "t4-short", "Tesla T4", 15360, 400)
    t4_long = _fake_agent(app, "t4-long", "Tesla T4", 15360, 9000)
    a100 = _fake_agent(app, "a100", "NVIDIA A100-SXM4-40GB", 40960, 9000)
    _fake_agent(app, "busy", "Tesla T4", 15360, 9000, state="busy")
    offer = _platform(app).offer()
    assert offer.gpus == ("A100", "T4") and offer.max_concurrent == 4 and offer.gpu_memory_gb == 40.0

    short, long, big = (_platform(app).submit(launch) for launch in launches[:3])

    inbox_of = {f.properties["orch_key"]: f.parents[0] for f in gdrive.find(orch_kind="ticket")}
    assert inbox_of == {"oshort01-1": t4_short, "olong001-1": t4_long, "obig0001-1": a100}
    assert (short.data["agent"], long.data["agent"], big.data["agent"]) == ("t4-short", "t4-long", "a100")
    with pytest.raises(CapacityError, match="busy"):  # every agent has work now
        _platform(app).submit(launches[3])


def test_submit_twice_with_the_same_key_writes_one_ticket(app, gdrive, tmp_path):
    launch = _launch(app, tmp_path, "otwice01-1", "run: python3 main.py\n")
    _fake_agent(app, "a1", "Tesla T4", 15360, 7200)
    first = _platform(app).submit(launch)
    again = _platform(app).submit(launch)
    assert first == again and len(gdrive.find(orch_kind="ticket")) == 1
    assert _platform(app).find("otwice01-1") == first and _platform(app).find("onone001-1") is None
    assert _platform(app).poll(first).state == RemoteState.PENDING


def test_an_agent_refuses_a_ticket_that_no_longer_fits_its_session(orch, agents, gdrive, tmp_path):
    # The agent reserves more time per job (--margin 100) than the controller assumed.
    agents.start("tight", session_seconds=150, margin=100)
    job = _submit(orch, _job(tmp_path, "toolong"))

    tick_until(lambda app: any(a.state == AttemptState.LOST for a in app.store.attempts_of(job)), timeout=30)

    lost = next(a for a in _attempts(job) if a.state == AttemptState.LOST)
    assert "refused it: needs" in lost.message and "left" in lost.message
    assert agents.keys_run_by("tight") == []


def test_an_agent_stops_taking_work_when_its_session_is_nearly_over(agents, gdrive, app):
    proc = agents.start("ending", session_seconds=4)
    assert proc.wait(timeout=20) == 0
    assert "not taking more work" in agents.output("ending")
    (heartbeat,) = gdrive.find("heartbeat.json", orch_agent="ending")
    assert heartbeat.properties["orch_state"] == "stopped"
    assert not _platform(app).offer().available


def test_logs_stream_while_running_and_cancel_stops_the_job_on_the_agent(orch, agents, gdrive, tmp_path):
    agents.start("a1")
    path = make_job(tmp_path / "chatty", "name: chatty\nrun: python3 -u main.py\nresources: {max_runtime: 1m}\n",
                    {"main.py": "import time\nprint('step one', flush=True)\ntime.sleep(60)\n"})
    job = _submit(orch, path)
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)

    wait_until(lambda: "step one" in orch("logs", job).output, 20, "'step one' in the logs", interval=0.2)
    assert orch("cancel", job).exit_code == 0

    wait_until(lambda: "stopping the runner" in agents.output("a1") and gdrive.find(
        "heartbeat.json", orch_agent="a1")[0].properties["orch_state"] == "idle", 20, "agent a1 idle", interval=0.1)
    assert _state(job) == JobState.CANCELLED
    (status,) = gdrive.find("status.json")
    assert json.loads(status.content)["state"] == "exited"  # the runner was stopped, its results kept


def test_the_agent_notebook_is_valid_and_carries_the_agent_runner_and_folder(orch, gdrive):
    result = orch("colab", "agent-notebook", "gdrive")

    assert result.exit_code == 0, result.output
    nb = nbformat.reads(result.output, as_version=4)
    nbformat.validate(nb)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert repr((REPO / "kernels" / "colab_agent.py").read_text()) in code
    assert repr((REPO / "kernels" / "runner.py").read_text()) in code
    root = gdrive.find("orch", orch_kind="root")[0].id
    assert f"'--folder-id', '{root}'" in nb.cells[-1].source and "colab_agent.main(" in nb.cells[-1].source
    assert "paid runtimes" in nb.cells[0].source


BROWSER = """\
import subprocess, sys, urllib.request
if len(sys.argv) == 2:  # return at once, as a browser does, and fetch the page from a child
    subprocess.Popen([sys.executable, __file__, sys.argv[1], "child"], start_new_session=True)
else:
    urllib.request.urlopen(sys.argv[1], timeout=10).read()
"""


def test_orch_auth_drive_runs_the_consent_flow_and_saves_the_token(gdrive, orch_home, tmp_path):
    browser = tmp_path / "browser.py"
    browser.write_text(BROWSER)
    token = orch_home / "platforms" / "gdrive" / "token.json"
    token.unlink()

    # A separate process: the `webbrowser` module reads $BROWSER once per process.
    result = orch_process("auth", "drive", "gdrive", env={"BROWSER": f"{sys.executable} {browser} %s",
                                                          "OAUTHLIB_INSECURE_TRANSPORT": "1"}, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "Saved the Drive token" in result.stdout and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert json.loads(token.read_text())["refresh_token"].startswith("rt-")
    assert "s3cret" not in result.stdout + result.stderr


def test_orch_auth_drive_on_another_platform_type_says_which_commands_fit(orch, config):
    config("platforms:\n  laptop: {type: local}\n")
    result = orch("auth", "drive", "laptop")
    assert result.exit_code == 2 and "is of type local" in result.output


def test_a_run_folder_left_without_its_ticket_is_not_adopted_and_is_submitted_again(app, gdrive, tmp_path):
    launch = _launch(app, tmp_path, "ocrash01-1", "run: python3 main.py\n")
    _fake_agent(app, "a1", "Tesla T4", 15360, 7200)
    platform = _platform(app)
    handle = platform.submit(launch)
    (ticket,) = gdrive.find(orch_kind="ticket")
    # As if the tick died after writing the ticket and before marking the run folder.
    platform.mailbox().t.delete(ticket.id)
    platform.mailbox().t.update(handle.data["run"], {"properties": {"orch_ticket": None}})

    assert platform.find(launch.key) is None
    assert platform.poll(handle).state == RemoteState.LOST
    again = platform.submit(launch)
    assert again.data["run"] != handle.data["run"] and len(gdrive.find(orch_kind="ticket")) == 1
