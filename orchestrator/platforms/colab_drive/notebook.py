"""The agent notebook that ``orch colab agent-notebook NAME`` prints.

The notebook is self-contained: it carries ``kernels/colab_agent.py`` and
``kernels/runner.py`` as text, writes them under ``/content/orch-agent`` and runs the
agent in the notebook's own kernel. Design choice: in the kernel rather than as a
``!python`` subprocess, because ``google.colab.auth.authenticate_user()`` needs the
notebook's front end for its sign-in prompt, and because a running cell is what
Colab counts as an attended session.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

AGENT_DIR = "/content/orch-agent"


def _write_cell(path: str, source: str) -> str:
    return f"# Written by orch; do not edit (regenerate with `orch colab agent-notebook`).\n" \
           f"from pathlib import Path\nPath({path!r}).parent.mkdir(parents=True, exist_ok=True)\n" \
           f"Path({path!r}).write_text({source!r})\nprint('wrote', {path!r})\n"


def agent_notebook(*, platform: str, folder: str, folder_id: str, tier: str, session_seconds: float,
                   agent_source: str, runner_source: str, min_job_seconds: float = 300) -> nbformat.NotebookNode:
    """Build the notebook for one configured ``colab_drive`` platform.

    Args:
        platform: the platform's name in config.yaml (shown to the user).
        folder / folder_id: the orch folder in My Drive and its id (the agent needs the id).
        tier: the Colab plan from config.yaml; only paid tiers get here.
        session_seconds: how long a runtime lasts on that plan.
        agent_source / runner_source: the text of kernels/colab_agent.py and kernels/runner.py.
    """
    intro = (
        f"# orch agent for platform `{platform}`\n\n"
        f"This notebook runs orch jobs that arrive in the Google Drive folder **{folder}**. "
        "Pick a GPU runtime (*Runtime → Change runtime type*), then *Runtime → Run all* and sign in "
        "when Colab asks. Keep the tab open: the last cell runs until the session is nearly over, "
        "sending a heartbeat, taking the jobs the controller puts in this agent's inbox and "
        "uploading their results.\n\n"
        f"Colab plan in orch's config: **{tier}**. Colab's terms allow a worker like this one only on "
        "paid runtimes with compute units left; it stops taking work "
        f"{min_job_seconds / 60:g} minutes before the session ends.\n\n"
        "To stop it, interrupt the last cell once: it hands back waiting jobs, lets the running one save "
        "its checkpoint, uploads its results and stops (orch then retries that job; only `orch cancel` "
        "cancels one). Interrupting twice stops the running job at once. On a runtime without a GPU the "
        "agent does not start."
    )
    args = ["--folder-id", folder_id, "--runner", f"{AGENT_DIR}/runner.py", "--work-dir", f"{AGENT_DIR}/work",
            "--session-seconds", f"{session_seconds:g}", "--session-from-boot",
            "--min-job-seconds", f"{min_job_seconds:g}"]
    run = (
        "import sys\n"
        f"sys.path.insert(0, {AGENT_DIR!r})\n"
        "import colab_agent\n"
        f"colab_agent.main({args!r})\n"
    )
    nb = new_notebook(
        cells=[
            new_markdown_cell(intro),
            new_code_cell("!nvidia-smi || echo 'No GPU: choose a GPU runtime before running the agent.'"),
            new_code_cell(_write_cell(f"{AGENT_DIR}/runner.py", runner_source)),
            new_code_cell(_write_cell(f"{AGENT_DIR}/colab_agent.py", agent_source)),
            new_code_cell(run),
        ],
        metadata={
            "accelerator": "GPU",
            "colab": {"name": f"orch-agent-{platform}.ipynb", "provenance": []},
            "kernelspec": {"display_name": "Python 3", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.validate(nb)
    return nb


def kernel_sources() -> tuple[str, str]:
    """The text of the agent and the runner, as installed with orch."""
    import kernels  # noqa: PLC0415 - the kernels package sits next to orchestrator

    here = Path(kernels.__file__).resolve().parent
    return (here / "colab_agent.py").read_text(), (here / "runner.py").read_text()
