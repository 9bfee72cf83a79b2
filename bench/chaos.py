"""Chaos: N jobs across two local platforms, a real sshd (through a cuttable relay) and,
with ``--kaggle``, the Kaggle emulator, while ticks are SIGKILLed at random moments,
runners are killed and the SSH tunnel is cut mid-command.

Prints, per run and in total: jobs succeeded, lost, executed twice (one attempt's
job ran more than once, or two attempts of a job ran at the same time), spurious LOST
(an attempt declared LOST that chaos never killed), outputs intact.
Target: 0 lost, 0 executed twice, 0 spurious LOST over 10 consecutive runs.

    python bench/chaos.py [--jobs 30] [--runs 10] [--seed 1] [--kaggle]

Needs /usr/sbin/sshd (apt-get install openssh-server). Every process it starts is
stopped by pid at the end; everything lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import scratch_home  # noqa: E402

JOB_SCRIPT = """\
import os, pathlib, random, time
ledger = pathlib.Path({ledger!r})
key = f"{{os.environ['ORCH_JOB_ID']}} {{os.environ['ORCH_ATTEMPT']}}"
with open(ledger, "a") as f:
    f.write(f"start {{key}} {{time.time():.3f}}\\n")
time.sleep(random.uniform(0.5, 3.0))
pathlib.Path(os.environ["ORCH_OUTPUT_DIR"], "out.txt").write_text(os.environ["ORCH_JOB_ID"] * 3)
with open(ledger, "a") as f:
    f.write(f"end {{key}} {{time.time():.3f}}\\n")
"""


def orch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          timeout=timeout)


def kill_runner(attempts: Path, chaos_log: list[str], rng: random.Random) -> None:
    """SIGKILL one live runner (only the runner: its job is orphaned) under ``attempts``."""
    files = sorted(attempts.glob("*/runner.pid.json"))
    rng.shuffle(files)
    for pid_file in files:
        try:
            doc = json.loads(pid_file.read_text())
            if not doc.get("job_pgid") or (pid_file.parent / "result.json").exists():
                continue
            os.kill(int(doc["pid"]), signal.SIGKILL)
        except (OSError, ValueError):
            continue
        chaos_log.append(pid_file.parent.name)
        return


def one_run(root: Path, args, rng: random.Random, sshd, kaggle) -> dict:
    from tests.emulators.relay import Relay

    home = Path(os.environ["ORCH_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    relay = Relay(control=root / "relay", port=sshd.port)
    known = sshd.write_known_hosts(root / "known_hosts")
    platforms = {
        "cpu1": {"type": "local", "max_concurrent": 3},
        "cpu2": {"type": "local", "max_concurrent": 3},
        "lab": {"type": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.user,
                "key": str(sshd.client_key.private), "known_hosts": str(known), "remote_dir": str(root / "remote"),
                "python": sys.executable, "proxy_command": " ".join(relay.argv), "heartbeat_interval": "0.5s",
                "heartbeat_timeout": "20s", "reconnect_tries": 2, "reconnect_delay": "0.1s", "max_concurrent": 4,
                "timeouts": {"connect": "3s", "banner": "2s", "auth": "3s", "channel": "2s", "command": "10s",
                             "sftp": "3s", "probe": "2s"}},
    }
    if kaggle is not None:
        platforms["kaggle"] = {"type": "kaggle", "retry_base": "0.05s", "dataset_poll": "0.05s",
                               "dataset_wait": "20s", "max_concurrent": 4}
    import yaml

    (home / "config.yaml").write_text(yaml.safe_dump({
        "platforms": platforms,
        "controller": {"failover_backoff": "0s", "lease_seconds": "20s", "unknown_window": "10m"}}))
    ledger = root / "ledger.txt"
    job_dir = root / "job"
    job_dir.mkdir(exist_ok=True)
    (job_dir / "work.py").write_text(JOB_SCRIPT.format(ledger=str(ledger)))
    (job_dir / "job.yaml").write_text("name: chaos\ncode: .\nrun: python work.py\nretries: 3\n"
                                      "resources: {max_runtime: 5m}\n")
    ids = []
    for _ in range(args.jobs):
        out = orch("submit", str(job_dir / "job.yaml"), "--json")
        ids.append(json.loads(out.stdout)["id"])

    chaos_log: list[str] = []
    deadline = time.monotonic() + args.timeout
    ticks = kills = cuts = 0
    live: list[subprocess.Popen] = []
    while time.monotonic() < deadline:
        # Ticks overlap, as cron plus a manual `orch tick` do: a new one every second or so.
        live = [p for p in live if p.poll() is None]
        if len(live) < 3:
            live.append(subprocess.Popen([sys.executable, "-m", "orchestrator", "tick", "--quiet"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ticks += 1
        time.sleep(rng.uniform(0.3, 1.5))  # chaos lands while ticks work
        if live and rng.random() < args.kill_tick:
            rng.choice(live).send_signal(signal.SIGKILL)
            kills += 1
        if rng.random() < args.kill_runner:
            kill_runner(home / "platforms" / rng.choice(["cpu1", "cpu2"]) / "attempts", chaos_log, rng)
        if rng.random() < args.kill_runner:
            kill_runner(root / "remote" / "attempts", chaos_log, rng)
        if rng.random() < args.cut:
            cuts += len(relay.cut()) > 0
        out = orch("status", "--all", "--json")
        states = {j["id"]: j["state"] for j in json.loads(out.stdout)} if out.returncode == 0 else {}
        if states and all(states.get(i) in ("SUCCEEDED", "FAILED", "LOST", "CANCELLED") for i in ids):
            break
    for p in live:
        p.wait(timeout=180)
    relay.close()
    return score(home, ids, ledger, chaos_log, ticks, kills, cuts)


def score(home: Path, ids: list[str], ledger: Path, chaos_log: list[str], ticks: int, kills: int,
          cuts: int) -> dict:
    from orchestrator.app import App
    from orchestrator.home import Home
    from orchestrator.store import attempt_key

    starts = Counter()
    spans: dict[str, list[tuple[float, float]]] = {}
    opened: dict[str, float] = {}
    for line in (ledger.read_text().splitlines() if ledger.exists() else []):
        kind, job, attempt, at = line.split()
        if kind == "start":
            starts[(job, attempt)] += 1
            opened[f"{job} {attempt}"] = float(at)
        else:
            spans.setdefault(job, []).append((opened.get(f"{job} {attempt}", float(at)), float(at)))
    twice = {job for (job, _), n in starts.items() if n > 1}
    for job, ss in spans.items():  # two attempts of one job running at once
        ss.sort()
        if any(b[0] < a[1] for a, b in zip(ss, ss[1:])):
            twice.add(job)
    app = App.open(Home.discover())
    try:
        succeeded = lost = failed = spurious = intact = 0
        where: Counter = Counter()
        for job_id in ids:
            job = app.store.job(job_id)
            succeeded += job.state.value == "SUCCEEDED"
            where[job.platform or "-"] += job.state.value == "SUCCEEDED"
            lost += job.state.value == "LOST"
            failed += job.state.value == "FAILED"
            for att in app.store.attempts_of(job_id):
                if att.state.value == "LOST" and attempt_key(job_id, att.number) not in chaos_log:
                    spurious += 1
            if job.state.value == "SUCCEEDED":
                outs = list((home / "results" / job_id).glob("attempt-*/outputs/out.txt"))
                intact += bool(outs) and outs[-1].read_text() == job_id * 3
    finally:
        app.close()
    return {"jobs": len(ids), "succeeded": succeeded, "lost": lost, "failed": failed, "executed_twice": len(twice),
            "spurious_lost": spurious, "outputs_intact": intact, "ticks": ticks, "ticks_killed": kills,
            "runners_killed": len(chaos_log), "tunnel_cuts": cuts, "succeeded_on": dict(sorted(where.items()))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300, help="seconds per run before giving up")
    p.add_argument("--kill-tick", type=float, default=0.2, help="chance per round of SIGKILLing a live tick")
    p.add_argument("--kill-runner", type=float, default=0.1, help="chance per round of killing a runner, per host")
    p.add_argument("--cut", type=float, default=0.2, help="chance per round of cutting the SSH tunnel")
    p.add_argument("--kaggle", action="store_true", help="add the Kaggle emulator as a fourth platform")
    args = p.parse_args()
    from tests.emulators.sshd import SSHD

    totals: Counter = Counter()
    totals_on: Counter = Counter()
    clean = 0
    with scratch_home() as base:
        sshd = SSHD.start(base / "sshd")
        kaggle = None
        try:
            if args.kaggle:
                from tests.emulators.kaggle import KaggleEmulator

                kaggle = KaggleEmulator(base / "kaggle").start()
                os.environ.update({"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": kaggle.username,
                                   "KAGGLE_KEY": kaggle.key, "HTTP_PROXY": kaggle.proxy_url,
                                   "NO_PROXY": "127.0.0.1", "KAGGLE_CONFIG_DIR": str(base / "kaggle-config")})
                (base / "kaggle-config").mkdir()
            for n in range(args.runs):
                root = base / f"run-{n}"
                root.mkdir()
                os.environ["ORCH_HOME"] = str(root / "home")
                os.environ["ORCH_HEARTBEAT_SECONDS"] = "0.5"
                result = one_run(root, args, random.Random(args.seed + n), sshd, kaggle)
                totals.update({k: v for k, v in result.items() if k != "succeeded_on"})
                totals_on.update(result["succeeded_on"])
                ok = result["lost"] == result["failed"] == result["executed_twice"] == result["spurious_lost"] == 0
                clean += ok
                print(json.dumps({"run": n, **result, "clean": ok}), flush=True)
                for pid_file in root.rglob("runner.pid.json"):  # nothing outlives its run
                    try:
                        doc = json.loads(pid_file.read_text())
                        for pid in (doc.get("job_pgid"), doc.get("pid")):
                            if pid:
                                os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
        finally:
            if kaggle is not None:
                kaggle.close()
            sshd.stop()
    print(json.dumps({"runs": args.runs, "clean_runs": clean, **dict(totals), "succeeded_on": dict(totals_on)}))
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
