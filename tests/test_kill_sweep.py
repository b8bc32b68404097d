"""kill -9 at random points of a run (training, the turntable, the export): no checkpoint on disk
is ever corrupt, resuming from ``last.ckpt`` loses at most one checkpoint interval, and the
resumed run finishes with its video and meshes.

Each point runs the tiny demo in a subprocess that prints every training step and turntable
frame (the runner below prints every step, and ``$THREESTUDIO_LIKE_PROGRESS_EVERY=0`` every
frame), waits for the point's
event in that output (``step k``, ``turntable frame j``, the export phase in ``status.json`` or
its ``m``-th mesh) plus a short random delay, and sends SIGKILL. The points come from a seeded
generator, so the sweep is the same on every run up to scheduling jitter; the phase actually hit
is read back from the output. CI runs one point per phase; the full sweep is marked slow.
"""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

import pytest

from conftest import REPO_ROOT, TINY_OVERRIDES
from threestudio_like.errors import CheckpointError
from threestudio_like.models.checkpoints import read_training_checkpoint
from threestudio_like.run_status import read_status

MAX_STEPS = 30
EVERY = 5
N_FRAMES = 8
SWEEP = [
    *TINY_OVERRIDES,
    f"trainer.max_steps={MAX_STEPS}",
    f"checkpoint.every_n_train_steps={EVERY}",
    "trainer.val_check_interval=10",
    f"data.n_test_views={N_FRAMES}",
]
RUNNER = ("import sys\n"
          "from threestudio_like.systems import callbacks\n"
          "callbacks.StepProgress.__init__.__defaults__ = (1,)  # a line every training step\n"
          "from threestudio_like.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")
STEP = re.compile(r"^step (\d+)/", re.M)
FRAME = re.compile(r"^turntable: frame\s+(\d+)/", re.M)
MESH = re.compile(r"^Mesh written", re.M)
TIMEOUT = 300.0


@dataclass
class KillPoint:
    phase: str
    """train | test | export: where the kill is aimed."""
    event: int
    """train: the step printed; test: the frame printed; export: meshes written (0: phase start)."""
    delay: float
    """Seconds after the event."""


def kill_points(n: int, seed: int = 18) -> List[KillPoint]:
    """``n`` points, half in training, a quarter each in the turntable and the export, in a
    seeded order that starts with one point of each phase."""
    rng = random.Random(seed)
    phases = ["train", "test", "export"] + [["train", "train", "test", "export"][i % 4] for i in range(n - 3)]
    events = {"train": (1, MAX_STEPS - 1), "test": (0, N_FRAMES - 2), "export": (0, 2)}
    return [KillPoint(p, rng.randint(*events[p]), round(rng.uniform(0.0, 0.15), 3)) for p in phases[:n]]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("THREESTUDIO_LIKE_STATUS_FILE", None)
    env["THREESTUDIO_LIKE_PROGRESS_EVERY"] = "0"  # a line every turntable frame
    return env


def _launch(args: List[str], log: str) -> subprocess.Popen:
    out = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=REPO_ROOT, env=_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def _trial(root: str) -> Optional[str]:
    found = glob.glob(os.path.join(root, "demo", "*"))
    return found[0] if found else None


def _reached(point: KillPoint, text: str, root: str) -> bool:
    if point.phase == "train":
        return any(int(s) >= point.event for s in STEP.findall(text))
    if point.phase == "test":
        return any(int(f) >= point.event for f in FRAME.findall(text)) or \
            (point.event == 0 and bool(STEP.findall(text)) and _phase(root) == "test")
    meshes = len(MESH.findall(text))
    return meshes >= point.event and (meshes > 0 or _phase(root) == "export")


def _phase(root: str) -> Optional[str]:
    trial = _trial(root)
    status = read_status(trial) if trial else None
    return status.get("phase") if status else None


def _hit(text: str, root: str) -> str:
    """Where the run was when it died, from its output."""
    if MESH.findall(text) or _phase(root) == "export":
        return "export"
    if FRAME.findall(text) or _phase(root) == "test":
        return "test"
    return "train"


def _completed_steps(text: str) -> int:
    steps = [int(s) for s in STEP.findall(text)]
    return max(steps, default=0)


def _check_checkpoints(trial: str) -> dict:
    """Every ``*.ckpt`` loads; temporary files left by the kill are counted apart."""
    ckpts = sorted(glob.glob(os.path.join(trial, "ckpts", "*.ckpt")))
    corrupt, steps = [], {}
    for path in ckpts:
        try:
            steps[os.path.basename(path)] = int(read_training_checkpoint(path)["global_step"])
        except CheckpointError as exc:
            corrupt.append(f"{path}: {exc}")
    leftovers = [p for p in glob.glob(os.path.join(trial, "ckpts", "*")) if not p.endswith(".ckpt")]
    return {"corrupt": corrupt, "steps": steps, "leftovers": leftovers}


def run_point(point: KillPoint, root: str) -> dict:
    """Kill a run at ``point``, check its checkpoints, resume it to the end; the figures."""
    os.makedirs(root, exist_ok=True)
    log = os.path.join(root, "killed.log")
    proc = _launch(["--config", "demo.yaml", "--train", f"exp_root_dir={root}", *SWEEP], log)
    start = time.time()
    try:
        while proc.poll() is None and time.time() - start < TIMEOUT:
            if _reached(point, open(log).read(), root):
                time.sleep(point.delay)
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before the kill point {point}:\n{open(log).read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = open(log).read()
    trial = _trial(root)
    assert trial is not None, text[-2000:]
    hit = _hit(text, root)
    found = _check_checkpoints(trial)
    last = os.path.join(trial, "ckpts", "last.ckpt")
    saved = found["steps"].get("last.ckpt", 0)
    completed = _completed_steps(text)
    resume_log = os.path.join(root, "resumed.log")
    if os.path.exists(last):
        args = ["--config", os.path.join(trial, "configs", "parsed.yaml"), "--train", f"resume={last}"]
    else:  # killed before the first checkpoint: nothing to resume, start again
        assert completed < EVERY + 1, text[-2000:]
        shutil.rmtree(trial)
        args = ["--config", "demo.yaml", "--train", f"exp_root_dir={root}", *SWEEP]
    resumed = _launch(args, resume_log)
    code = resumed.wait(timeout=TIMEOUT)
    trial = _trial(root)
    status = read_status(trial) or {}
    outputs = status.get("outputs", {})
    return {
        "point": point, "hit": hit, "completed": completed, "saved": saved,
        "lost": max(completed - saved, 0), "corrupt": found["corrupt"], "leftovers": found["leftovers"],
        "resume_exit": code, "state": status.get("state"), "step": status.get("step"),
        "finished_outputs": bool(outputs.get("video")) and bool(outputs.get("meshes")),
        "resume_tail": open(resume_log).read()[-1500:],
    }


def _assert_point(result: dict) -> None:
    assert not result["corrupt"], result
    assert result["lost"] <= EVERY, result
    assert result["resume_exit"] == 0 and result["state"] == "finished", result
    assert result["step"] == MAX_STEPS and result["finished_outputs"], result


def _sweep(tmp_path, points: List[KillPoint]) -> List[dict]:
    results = []
    for i, point in enumerate(points):
        results.append(run_point(point, str(tmp_path / f"p{i:02d}")))
    hits = [r["hit"] for r in results]
    print(f"\nkill -9 sweep: {len(results)} points (train {hits.count('train')}, turntable "
          f"{hits.count('test')}, export {hits.count('export')}); corrupt checkpoints "
          f"{sum(len(r['corrupt']) for r in results)}; steps lost max {max(r['lost'] for r in results)} "
          f"(interval {EVERY}); temporary files left {sum(len(r['leftovers']) for r in results)}; "
          f"resumed and finished {sum(r['state'] == 'finished' for r in results)}")
    for r in results:
        print(f"  {r['point']} -> hit {r['hit']}, completed {r['completed']}, saved {r['saved']}, "
              f"lost {r['lost']}, leftovers {len(r['leftovers'])}, resumed: {r['state']}")
    for r in results:
        _assert_point(r)
    return results


def test_kill_points_are_seeded_and_cover_every_phase():
    points = kill_points(20)
    assert points == kill_points(20)
    assert [p.phase for p in points[:3]] == ["train", "test", "export"]
    assert {p.phase: sum(q.phase == p.phase for q in points) for p in points} == {"train": 10, "test": 5, "export": 5}


def test_kill_one_point_per_phase(tmp_path):
    results = _sweep(tmp_path, kill_points(3))
    assert sorted(r["hit"] for r in results) == ["export", "test", "train"], [r["hit"] for r in results]


@pytest.mark.slow
def test_kill_sweep_of_twenty_points(tmp_path):
    results = _sweep(tmp_path, kill_points(20))
    assert {r["hit"] for r in results} == {"train", "test", "export"}
