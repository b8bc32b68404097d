"""``--launcher slurm``: submit each job attempt to SLURM through submitit.

The runner stays the orchestrator (same ``state.json``, retries, back-off, gallery); only where
an attempt runs changes. Each attempt is one SLURM job (name ``tsl-<job id>``, one node, one
task, ``--slurm-gpus`` GPUs) that runs the same training command as a local worker would, on a
filesystem shared with the login node (the batch folder, the repository and the Python
environment must be visible from the compute nodes). The attempt's environment, its run id and
status file included, goes with the submission, so its outcome is read from its ``status.json``
exactly as for a local worker (:mod:`.outcome`). Submission files, submitit's pickles and its
stdout/stderr go to ``<batch>/slurm/``; the job's own log is still ``<batch>/logs/<id>.log``.

* Preemption or the time limit: submitit sends SIGUSR2 and calls
  :meth:`SlurmAttempt.checkpoint`, which lets the training save ``last.ckpt`` and requeues the
  same SLURM job; the requeued attempt resumes from that checkpoint.
* Ctrl-C on the runner cancels the running SLURM jobs (they checkpoint on SIGTERM), marks them
  pending and exits; re-running resubmits them with ``resume=``.
* If the runner dies (a dropped SSH session) the SLURM jobs keep running; the next run finds
  their job ids in the state and watches them again.

``--slurm-cluster local`` uses submitit's ``LocalExecutor`` (the same pickled submission, run
on this machine) and is what the tests use.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from threestudio_like.batch.outcome import AttemptResult, with_resume
from threestudio_like.errors import SlurmUnavailable


class SlurmAttempt:
    """The callable submitted to the cluster: one training attempt, checkpointable.

    Runs the training command as a child process with its output appended to the job log and
    returns its exit status. SIGTERM/SIGINT (``scancel``, a cancelled local job) are passed on to
    the training, which saves its checkpoint and exits.
    """

    def __init__(self, cmd: Sequence[str], ckpt: str, env: Dict[str, str], log_path: str, cwd: str) -> None:
        self.cmd = list(cmd)
        self.ckpt = ckpt
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: Optional[subprocess.Popen] = None

    def __call__(self) -> int:
        cmd = with_resume(self.cmd, self.ckpt)
        previous = {}
        with open(self.log_path, "ab") as log:
            log.write(f"[slurm] {os.environ.get('SLURM_JOB_ID') or os.environ.get('SUBMITIT_LOCAL_JOB_ID', '?')} "
                      f"on {os.uname().nodename}: {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, **self.env}, cwd=self.cwd)
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._forward)
            try:
                # poll, not wait(): a signal handler (checkpoint) must be able to poll the child
                # too, and Popen.wait() would hold the lock that poll() needs
                while self._proc.poll() is None:
                    time.sleep(0.5)
                return self._proc.returncode
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _forward(self, signum: int, frame: Any) -> None:
        self._stop_child(wait_s=0)

    def _stop_child(self, wait_s: float) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Lightning saves a checkpoint and exits
            deadline = time.time() + wait_s
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.2)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preemption/time limit: let the training checkpoint, then requeue (it resumes)."""
        import submitit

        self._stop_child(wait_s=60)
        return submitit.helpers.DelayedSubmission(
            SlurmAttempt(self.cmd, self.ckpt, self.env, self.log_path, self.cwd))

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None
        return state


class SlurmHandle:
    """A submitted attempt, polled by the runner."""

    def __init__(self, job: Any) -> None:
        self.job = job

    @property
    def ident(self) -> Dict[str, Any]:
        return {"slurm_job_id": str(self.job.job_id)}

    def poll(self) -> Optional[AttemptResult]:
        """The attempt's exit status once the cluster job has ended, else None."""
        try:
            if not self.job.done():
                return None
        except Exception:  # the scheduler did not answer: ask again later
            return None
        try:
            return AttemptResult(int(self.job.result()))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return AttemptResult(None, f"cluster job {self.job.job_id} ended without a result: {first}")

    def interrupt(self) -> None:
        """Cancel: the training gets SIGTERM, saves its checkpoint and exits."""
        process = getattr(self.job, "_process", None)
        if process is not None:  # submitit's local executor: SIGTERM reaches the task (SIGINT would kill it)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            return
        try:
            self.job.cancel(check=False)
        except Exception:
            pass

    def kill(self) -> None:
        """Kill the cluster job at once."""
        process = getattr(self.job, "_process", None)
        if process is not None:
            if process.poll() is None:
                process.kill()
            return
        try:
            subprocess.run(["scancel", "--signal=KILL", "--full", str(self.job.job_id)], check=False,
                           capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            pass


class SlurmLauncher:
    """Submits attempts with submitit; ``max_parallel`` of them are queued at once."""

    name = "slurm"

    def __init__(self, folder: os.PathLike, *, cluster: str = "slurm", max_parallel: int = 32,
                 time_min: int = 1440, gpus: int = 1, cpus: int = 8, mem_gb: Optional[int] = None,
                 partition: Optional[str] = None, account: Optional[str] = None, qos: Optional[str] = None,
                 constraint: Optional[str] = None, setup: Sequence[str] = ()) -> None:
        try:
            import submitit
        except ImportError:
            raise SlurmUnavailable("--launcher slurm needs submitit: pip install submitit "
                                   "(or pip install -e '.[slurm]')") from None
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if cluster == "slurm" and missing:
            raise SlurmUnavailable(f"{' and '.join(missing)} not on PATH: run the batch on a SLURM login node, "
                                   f"or use the default --launcher local")
        self.submitit = submitit
        self.cluster = cluster
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster=cluster)
        params: Dict[str, Any] = {"timeout_min": int(time_min), "nodes": 1, "tasks_per_node": 1}
        if cluster == "slurm":
            params.update(gpus_per_node=int(gpus), cpus_per_task=int(cpus))
            if mem_gb:
                params["mem_gb"] = int(mem_gb)
            for key, value in (("slurm_partition", partition), ("slurm_account", account),
                               ("slurm_qos", qos), ("slurm_constraint", constraint)):
                if value:
                    params[key] = value
            if setup:
                params["slurm_setup"] = list(setup)
        self.executor.update_parameters(**params)
        self.slots: List[str] = [f"slurm{i}" for i in range(max(int(max_parallel), 1))]

    @classmethod
    def from_args(cls, folder: os.PathLike, args: Any) -> "SlurmLauncher":
        """Build from the runner's ``--slurm-*`` command-line options."""
        return cls(folder, cluster=args.slurm_cluster, max_parallel=args.slurm_max_parallel,
                   time_min=args.slurm_time, gpus=args.slurm_gpus, cpus=args.slurm_cpus,
                   mem_gb=args.slurm_mem_gb, partition=args.slurm_partition, account=args.slurm_account,
                   qos=args.slurm_qos, constraint=args.slurm_constraint, setup=args.slurm_setup)

    def describe(self) -> str:
        """One line for the progress view and the state's run log."""
        return f"slurm via submitit ({self.cluster}), up to {len(self.slots)} job(s) queued, files in {self.folder}"

    def start(self, slot: str, job_id: str, cmd: Sequence[str], ckpt: str, env: Dict[str, str],
              log_path: str) -> SlurmHandle:
        """Submit one attempt as the SLURM job ``tsl-<job id>``."""
        self.executor.update_parameters(name=f"tsl-{job_id}")
        job = self.executor.submit(SlurmAttempt(cmd, ckpt, env, log_path, os.getcwd()))
        return SlurmHandle(job)

    def reattach(self, attempt: Dict[str, Any]) -> Optional[SlurmHandle]:
        """Watch again a job submitted by an earlier runner (SLURM); stop a local leftover."""
        job_id = attempt.get("slurm_job_id")
        if not job_id:
            return None
        if self.cluster == "slurm":
            return SlurmHandle(self.submitit.SlurmJob(folder=str(self.folder), job_id=str(job_id)))
        job = self.submitit.LocalJob(folder=str(self.folder), job_id=str(job_id))
        if job.paths.result_pickle.exists():
            return SlurmHandle(job)
        _stop_local_controller(int(job_id))
        return None


def _stop_local_controller(pid: int) -> None:
    """SIGTERM a leftover submitit local controller (it passes it on to the training)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"submitit.local._local" not in f.read():
                return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
