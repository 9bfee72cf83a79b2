"""A real one-node Slurm cluster on this machine: ``munged``, ``slurmctld`` and ``slurmd``.

Not a fake: Debian's slurm-wlm 22.05 daemons run from a private directory with a
minimal ``slurm.conf`` (one node = this machine, ``proctrack/linuxproc``, no
accounting) and one fake GPU (``gres/gpu`` type t4 backed by ``/dev/null``,
AutoDetect off). Where this machine's cgroup v1 memory controller can be written
(``memory_limits``), ``task/cgroup`` with ``ConstrainRAMSpace`` enforces ``--mem``
as a real site does (a job over it ends OUT_OF_MEMORY); elsewhere ``task/none``. Every daemon runs in the foreground as a process this
object owns and stops by pid. Ports are free high ports of 127.0.0.1; munge uses its
own key and socket, so nothing of the machine's own Slurm/munge is touched. Clients
find the cluster through ``SLURM_CONF`` (the test sshd sets it in every session).

Contract: ``SlurmCluster.start(workdir)`` returns once ``sinfo`` shows the node idle,
or raises ``SlurmUnavailable`` with the reason (tests skip on it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.emulators.sshd import free_port

NODE = "orchnode"
GPU = "gpu:t4:1"
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
_CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")
_CGROUP_CONF = """\
CgroupPlugin=cgroup/v1
CgroupAutomount=no
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
"""


def cgroup_memory_writable() -> bool:
    """Whether slurmd can make memory cgroups here (cgroup v1, as root)."""
    probe = _CGROUP_V1_MEMORY / f"orch-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return True


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why."""


_CONF = """\
ClusterName=orchtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin={task}
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=0
MinJobAge=300
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters={select}
DefMemPerCPU=1500
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
KillWait=3
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 Gres={gpu} State=UNKNOWN
PartitionName=gpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """One running cluster; ``env`` is what a client needs (``SLURM_CONF``)."""

    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: ``--mem`` is enforced (task/cgroup); else jobs may use any memory.
    memory_limits: bool = False

    @property
    def conf(self) -> Path:
        return self.workdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    @classmethod
    def start(cls, workdir: Path) -> "SlurmCluster":
        missing = [d for d in DAEMONS if not os.access(d, os.X_OK)]
        if missing or not shutil.which("sbatch"):
            raise SlurmUnavailable(f"{', '.join(missing) or 'sbatch'} not found: install slurm with "
                                   "`apt-get install -y slurmctld slurmd slurm-client munge`")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster's slurmd must run as root")
        workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool"):
            (workdir / sub).mkdir(exist_ok=True)
        key = workdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        cluster = cls(workdir, memory_limits=cgroup_memory_writable())
        if cluster.memory_limits:
            (workdir / "cgroup.conf").write_text(_CGROUP_CONF)
        cluster.conf.write_text(_CONF.format(
            host=socket.gethostname().split(".")[0], ctld_port=free_port(), d_port=free_port(), dir=workdir,
            node=NODE, gpu=GPU, task="task/cgroup" if cluster.memory_limits else "task/none",
            select="CR_Core_Memory" if cluster.memory_limits else "CR_Core"))
        (workdir / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu Type=t4 File=/dev/null\n")
        try:
            cluster._spawn("munged", ["/usr/sbin/munged", "-F", "--force", f"--socket={workdir}/munge.sock",
                                      f"--key-file={key}", f"--log-file={workdir}/munged.log",
                                      f"--pid-file={workdir}/munged.pid", f"--seed-file={workdir}/munged.seed"])
            cluster._wait(lambda: (workdir / "munge.sock").exists(), "munged did not create its socket")
            cluster.start_controller()
            cluster._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-N", NODE, "-f", str(cluster.conf)])
            cluster.wait_idle()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                env={**os.environ, **self.env}, start_new_session=True)
        finally:
            log.close()

    def _wait(self, ok, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited: {self.log(dead[0])[-500:]}")
            time.sleep(0.2)
        raise SlurmUnavailable(f"{what} within {timeout:.0f}s: {self.log('slurmctld')[-300:]}")

    def start_controller(self) -> None:
        """Start slurmctld (again); it recovers its jobs from StateSaveLocation."""
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.client("sinfo", "-h").returncode == 0, "slurmctld did not answer")

    def stop_controller(self) -> None:
        """Stop slurmctld only (jobs keep running on slurmd); ``start_controller`` resumes."""
        self._stop("slurmctld")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons (slurmd, slurmctld, munged) by pid."""
        if "slurmctld" in self.procs:
            self.client("scancel", "--user=root")
            self._wait_quiet()
        for name in ("slurmd", "slurmctld", "munged"):
            self._stop(name)

    def _wait_quiet(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.client("squeue", "-h", "-o", "%i").stdout.strip():
            time.sleep(0.3)

    # ------------------------------------------------------------------ clients
    def client(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scontrol, scancel, sbatch) here."""
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **self.env})

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until the node is idle (resumed, if a test set it down)."""
        def idle() -> bool:
            state = self.client("sinfo", "-h", "-n", NODE, "-o", "%T").stdout.strip()
            if state.startswith(("down", "drain", "inval")):
                self.client("scontrol", "update", f"nodename={NODE}", "state=resume")
            return state == "idle"

        self._wait(idle, f"node {NODE} did not become idle ({self.client('sinfo', '-h', '-o', '%T %E').stdout.strip()})",
                   timeout)

    def jobs(self) -> list[tuple[str, str, str]]:
        """(id, name, state) of every job slurmctld knows, ended ones included."""
        out = self.client("squeue", "-h", "-t", "all", "-o", "%i|%j|%T").stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def log(self, name: str) -> str:
        for path in (self.workdir / f"{name}.log", self.workdir / f"{name}.out"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                return text
        return ""
