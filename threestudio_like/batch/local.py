"""Local workers: each attempt is a child process on this machine, one worker slot per GPU.

A slot is a GPU (``CUDA_VISIBLE_DEVICES`` set for its child) or, without GPUs, one of
``--workers`` CPU slots. Children run in their own session, so the terminal's Ctrl-C reaches
only the runner, which then stops them once and cleanly; on Linux each child also gets SIGTERM
when the runner dies (parent-death signal), so a killed runner's jobs checkpoint and exit
instead of running on unsupervised. The next runner finds such leftovers by pid and makes sure
they are gone (:meth:`LocalLauncher.reattach`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from threestudio_like.batch.outcome import AttemptResult, with_resume


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the runner dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalHandle:
    """A running local attempt (one child process)."""

    def __init__(self, proc: "subprocess.Popen[bytes]", log: Any) -> None:
        self.proc = proc
        self._log = log

    @property
    def ident(self) -> Dict[str, Any]:
        """What the state records to find the attempt again: its pid."""
        return {"pid": self.proc.pid}

    def poll(self) -> Optional[AttemptResult]:
        """How the attempt ended, or None while it runs."""
        rc = self.proc.poll()
        if rc is None:
            return None
        self._log.close()
        return AttemptResult(rc)

    def interrupt(self) -> None:
        """Ask the job to save a checkpoint and exit (as Ctrl-C would)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL the job (it keeps its last periodic checkpoint)."""
        if self.proc.poll() is None:
            self.proc.kill()


class LocalLauncher:
    """One worker slot per GPU (``CUDA_VISIBLE_DEVICES`` set per slot), or ``workers`` CPU slots."""

    name = "local"

    def __init__(self, gpus: Optional[Sequence[str]] = None, workers: int = 1) -> None:
        self.gpus = list(gpus or [])
        if self.gpus:
            self.slots = [f"gpu{g}" for g in self.gpus]
            self._env = {f"gpu{g}": {"CUDA_VISIBLE_DEVICES": str(g)} for g in self.gpus}
        else:
            self.slots = [f"cpu{i}" for i in range(max(int(workers), 1))]
            threads = max((os.cpu_count() or 1) // len(self.slots), 1)
            extra = {"OMP_NUM_THREADS": str(threads)} if len(self.slots) > 1 and "OMP_NUM_THREADS" not in os.environ else {}
            self._env = {slot: dict(extra) for slot in self.slots}

    def describe(self) -> str:
        """One line for the progress view and the state's run log."""
        return f"local, {len(self.slots)} worker(s): {', '.join(self.slots)}"

    def start(self, slot: str, job_id: str, cmd: Sequence[str], ckpt: str, env: Dict[str, str],
              log_path: str) -> LocalHandle:
        """Start one attempt on ``slot``, output appended to ``log_path``."""
        full_cmd = with_resume(cmd, ckpt)
        child_env = {**os.environ, **env, **self._env[slot]}
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            full_cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
            start_new_session=True,  # the terminal's Ctrl-C reaches the runner, which stops jobs once
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        return LocalHandle(proc, log)

    def reattach(self, attempt: Dict[str, Any]) -> Optional[LocalHandle]:
        """Stop a job left running by a runner that was killed (it resumes from its checkpoint)."""
        pid = attempt.get("pid")
        if pid and is_our_process(pid, attempt.get("config_file", "")):
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 120
            while time.time() < deadline and alive(pid):
                time.sleep(0.2)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def is_our_process(pid: int, marker: str) -> bool:
    """Whether ``pid`` is alive and its command line names ``marker`` (the job's config file),
    so that a recycled pid is never signalled."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return False
    return bool(marker) and marker in cmdline and alive(pid)


def detect_gpus() -> List[str]:
    """Visible GPU ids: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``; [] without GPUs."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
