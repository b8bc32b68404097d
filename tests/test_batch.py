"""Overnight batch runner: job-file validation, outcomes from status.json, retries and back-off,
Ctrl-C, kill-and-resume, planted checkpoints, the 4-job acceptance batch on the CPU demo, and the
SLURM launcher (submitit's local executor and a fake ``sbatch``).

The scheduling tests use a fake trainer (a few lines of Python that behave like ``launch.py``:
trial directory, checkpoint, outputs and a ``status.json`` honouring the run id and status file
the runner sets, or an OOM/crash/config error on demand), so they take seconds; the acceptance
tests run the real demo at toy size.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import yaml

from threestudio_like.batch.gallery import read_final_loss
from threestudio_like.batch.jobs import JobFileError, load_job_file
from threestudio_like.batch.local import LocalLauncher, alive
from threestudio_like.batch.outcome import (attempt_status, classify, oom_overrides, retry_delay,
                                            with_resume)
from threestudio_like.batch.progress import status_progress
from threestudio_like.batch.runner import Runner
from threestudio_like.batch.state import BatchLock, BatchState
from threestudio_like.cli import main as cli_main
from threestudio_like.models.checkpoints import checkpoint_step

from conftest import REPO_ROOT, TINY_OVERRIDES


def _write_jobs(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, str) else doc)
    return path


def _state(batch_dir: Path) -> Dict[str, Any]:
    return json.loads((batch_dir / "state.json").read_text())


def _ckpt_step(path: Path) -> int:
    step = checkpoint_step(str(path))
    assert step is not None, f"{path} is not a readable training checkpoint"
    return step


# ------------------------------------------------------------------------------------------
# job files


def test_validator_names_job_and_field(tmp_path):
    jobs = _write_jobs(tmp_path / "jobs.yaml", {
        "defaults": {"config": "demo.yaml", "overrides": ["trainer.max_steps=4"], "colour": "red"},
        "jobs": [
            {"name": "fine"},
            {"name": "typo", "overrides": {"system.guidance.resolutin": 3}},
            {"prompt": "a corgi"},                       # the demo takes no prompt
            {"image": "missing.png"},
            {"config": "demo.yml"},
            {"name": "bad name!", "retries": -1, "seeds": [1, 1]},
            {"overrides": ["trainer.max_step=3", "seed=2", "no-equals"]},
            {"export": ["fbx"], "timeout": 0},
            {"name": "fine"},
        ],
    })
    with pytest.raises(JobFileError) as info:
        load_job_file(jobs)
    problems = info.value.problems
    text = "\n".join(problems)
    expected = [
        "defaults: unknown field 'colour'",
        "job 2 (\"typo\"), field 'overrides': Unknown config key 'system.guidance.resolutin'. "
        "Did you mean 'system.guidance.resolution'?",
        "job 3 (\"a_corgi\"), field 'prompt': recipe 'demo.yaml' does not take a prompt",
        "job 4 (\"missing.png\"), field 'image': file not found: 'missing.png'",
        "job 5, field 'config': Config file 'demo.yml' not found",
        "Did you mean 'demo.yaml'?",
        "job 6 (\"bad name!\"), field 'name':",
        "job 6 (\"bad name!\"), field 'retries': expected an integer >= 0",
        "job 6 (\"bad name!\"), field 'seeds': repeated seeds",
        "job 7, field 'overrides': 'seed' is set by the batch runner",
        "job 7, field 'overrides': 'no-equals' is not of the form key=value",
        "Did you mean 'trainer.max_steps'?",
        "job 8, field 'export': formats must be among all, glb, obj, ply, usdz",
        "job 8, field 'timeout': expected seconds > 0",
        "job 9 (\"fine\"), field 'name': 'fine' is already the name of job 1",
    ]
    for fragment in expected:
        assert fragment in text, f"missing: {fragment}\n---\n{text}"
    assert not any(p.startswith("job 1 ") for p in problems)  # the valid job is not blamed
    # nothing was created
    assert not (tmp_path / "outputs").exists()


def test_job_file_expansion_ids_and_text_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = _write_jobs(tmp_path / "tonight.yaml", {
        "defaults": {"config": "demo.yaml", "export": "glb", "overrides": {"trainer": {"max_steps": 4}}},
        "jobs": [{"name": "a", "seeds": [0, 1]}, {}, {"seed": 5}, {"name": "demo"}],
    })
    spec = load_job_file(jobs, overrides=["trainer.max_steps=3"])
    assert spec.name == "tonight"
    assert spec.output_dir == Path("outputs/batches/tonight")
    assert [j.id for j in spec.jobs] == ["a-s0", "a-s1", "demo-2", "demo-3", "demo"]
    assert [j.seed for j in spec.jobs] == [0, 1, 0, 5, 0]
    job = spec.jobs[0]
    assert job.composed.trainer.max_steps == 3          # command-line overrides come last
    assert list(job.composed.system.exporter.formats) == ["glb"]
    assert job.composed.use_timestamp is False
    assert spec.jobs[0].spec_hash() != spec.jobs[1].spec_hash()
    # a plain-text file: one prompt per line, needs --config
    text = _write_jobs(tmp_path / "prompts.txt", "# tonight\na corgi\n\nimage: nope.png\n")
    with pytest.raises(JobFileError) as info:
        load_job_file(text)
    assert "job 1 (\"a corgi\"), field 'config': no recipe" in str(info.value)
    with pytest.raises(JobFileError) as info:
        load_job_file(text, config="demo.yaml")
    msg = str(info.value)
    assert "job 1 (\"a_corgi\"), field 'prompt': recipe 'demo.yaml' does not take a prompt" in msg
    assert "job 2 (\"nope.png\"), field 'image': file not found" in msg


def _status(state: str = "finished", category: str = None, kind: str = "", message: str = "",
            exit_code: int = None, run_id: str = "r1", **fields: Any) -> Dict[str, Any]:
    """A ``status.json`` as the command line writes it."""
    error = None
    if category is not None:
        exit_code = exit_code if exit_code is not None else (2 if category in ("config", "weights", "checkpoint") else 1)
        error = {"type": kind, "category": category, "message": message, "exit_code": exit_code}
    return {"version": 1, "run_id": run_id, "mode": "train", "state": state, "phase": fields.pop("phase", "export"),
            "step": fields.pop("step", 4), "max_steps": fields.pop("max_steps", 4), "progress": None, "loss": 0.5, "error": error,
            "exit_code": 0 if state == "finished" else exit_code, "outputs": {}, **fields}


def test_classify_backoff_and_oom_overrides(tmp_path):
    done = _status()
    assert classify(0, done) == ("ok", None)
    assert classify(1, _status("failed", "oom", "OutOfMemoryError", "CUDA out of memory. Tried to allocate 2 GiB"))[0] == "oom"
    assert classify(-9, _status("running", phase="train", step=50))[0] == "oom"
    assert classify(137, None)[0] == "oom"
    nan = classify(1, _status("failed", "nonfinite", "NonFiniteLossError", "non-finite loss: loss_sds = nan at step 3."))
    assert nan == ("nan", "non-finite loss: loss_sds = nan at step 3.")
    assert classify(2, _status("failed", "config", "ConfigError", "Unknown config key 'x'")) == (
        "config", "Unknown config key 'x'")
    for category in ("weights", "checkpoint"):                        # input problems: exit 2, never retried
        assert classify(2, _status("failed", category, "CheckpointError", "resume=x: refused"))[0] == "config"
    outcome, error = classify(1, _status("failed", "crash", "ValueError", "ValueError: Invalid learning rate: -1"))
    assert (outcome, error) == ("crash", "ValueError: Invalid learning rate: -1")
    assert classify(-11, None)[0] == "crash" and classify(-11, None)[1] == "killed by SIGSEGV"
    assert classify(-11, _status("running", phase="train", step=57, max_steps=600)) == (
        "crash", "killed by SIGSEGV before finishing (phase train, step 57/600)")
    # an attempt that wrote no status of its own is judged by its exit status alone
    assert classify(0, None) == ("crash", "exited with status 0 without a status")
    assert classify(1, None) == ("crash", "exited with status 1 without a status")
    assert classify(2, None)[0] == "crash"                            # no status: not known to be an input error
    assert classify(0, _status("running", phase="test")) == ("crash", "exited with status 0 before finishing (phase test, step 4/4)")
    assert classify(1, done)[0] == "crash"                            # finished, yet a failing exit status
    assert classify(1, None, timed_out=True)[0] == "timeout"
    assert classify(1, None, stopping=True)[0] == "interrupted"
    assert classify(0, done, stopping=True)[0] == "ok"
    assert classify(None, None, launcher_error="cluster job 7 ended without a result") == (
        "crash", "cluster job 7 ended without a result")
    assert [retry_delay(30, k) for k in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(30, 20) == 3600
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  batch_size: [8, 4]\n  n_view: 4\nsystem:\n  renderer:\n    eval_chunk_size: 4096\n")
    keys = ["data.batch_size", "system.renderer.eval_chunk_size", "system.not_there"]
    assert oom_overrides(str(cfg), keys, 0) == []
    assert oom_overrides(str(cfg), keys, 1) == ["data.batch_size=[4,4]", "system.renderer.eval_chunk_size=2048"]
    assert oom_overrides(str(cfg), keys, 3) == ["data.batch_size=[4,4]", "system.renderer.eval_chunk_size=512"]


def test_attempt_status_and_progress_come_from_status_json(tmp_path):
    path = tmp_path / "status.json"
    assert attempt_status(path, "r1") is None                         # none written yet
    path.write_text(json.dumps(_status(run_id="r0")))
    assert attempt_status(path, "r1") is None                         # an earlier attempt's: ignored
    path.write_text(json.dumps(_status("running", phase="train", step=57, max_steps=600, run_id="r1")))
    assert status_progress(attempt_status(path, "r1")) == "57/600"
    test = _status("running", phase="test", progress={"done": 12, "total": 48})
    assert status_progress(test) == "test 12/48"
    assert status_progress(_status("running", phase="export", progress=None)) == "export"
    assert status_progress(_status("running", phase="setup", step=None)) == "setup"
    assert status_progress(None) == "-"


def test_lock_refuses_a_second_runner(tmp_path, capsys):
    jobs = _write_jobs(tmp_path / "jobs.yaml", {"defaults": {"config": "demo.yaml"}, "jobs": [{}]})
    out = tmp_path / "batch"
    with BatchLock(out):
        assert cli_main(["--batch", str(jobs), "--out", str(out)]) == 2
    assert "another runner" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# scheduling with a fake trainer

FAKE_TRAINER = textwrap.dedent('''
    """Behaves like launch.py --train for the runner; FAKE_PLAN=ok,oom,crash,config,hang,... per attempt.

    Writes its status where $THREESTUDIO_LIKE_STATUS_FILE says (else <trial>/status.json), with
    $THREESTUDIO_LIKE_RUN_ID as its run id; the lie-* plans print text that contradicts it."""
    import json, os, signal, sys, time, yaml
    args = sys.argv[1:]
    cfg = yaml.safe_load(open(args[args.index("--config") + 1]))
    trial = cfg["trial_dir"]
    os.makedirs(os.path.join(trial, "ckpts"), exist_ok=True)
    counter = os.path.join(trial, "attempts.txt")
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(n))
    plan = os.environ.get("FAKE_PLAN", "ok").split(",")
    what = plan[min(n, len(plan)) - 1]
    status_path = os.environ.get("THREESTUDIO_LIKE_STATUS_FILE") or os.path.join(trial, "status.json")
    status = {"version": 1, "run_id": os.environ.get("THREESTUDIO_LIKE_RUN_ID") or "standalone", "mode": "train",
              "state": "running", "phase": "setup", "step": None, "max_steps": 4, "progress": None, "loss": None,
              "error": None, "exit_code": None, "outputs": {}}
    def write(**fields):
        status.update(fields)
        with open(status_path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(status_path + ".tmp", status_path)
    def fail(category, kind, message, code, **more):
        write(state="failed", exit_code=code,
              error={"type": kind, "category": category, "message": message, "exit_code": code, **more})
        sys.exit(code)
    write()
    print("Trial directory:", trial)
    print("ARGS", " ".join(args[2:]), flush=True)
    def ckpt():
        open(os.path.join(trial, "ckpts", "last.ckpt"), "w").write("fake")
    def outputs():
        save = os.path.join(trial, "save")
        os.makedirs(os.path.join(save, "it4-test"), exist_ok=True)
        os.makedirs(os.path.join(save, "it4-export"), exist_ok=True)
        for rel in ("it4-test.mp4", "it4-test/0.png", "it4-export/model.glb", "it4-export/model.obj"):
            open(os.path.join(save, rel), "w").write("x")
        os.makedirs(os.path.join(trial, "logs", "csv"), exist_ok=True)
        open(os.path.join(trial, "logs", "csv", "metrics.csv"), "w").write("epoch,step,train/loss\\n0,3,0.25\\n")
        return {"checkpoint": "ckpts/last.ckpt", "video": "save/it4-test.mp4", "turntable_frames": "save/it4-test",
                "meshes": {"glb": "save/it4-export/model.glb", "obj": "save/it4-export/model.obj"}}
    def finished():
        write(state="finished", phase="export", step=4, loss=0.25, exit_code=0, outputs=outputs())
    if what == "ok":
        ckpt(); finished(); sys.exit(0)
    if what == "export-fails":  # trained to the end, then the export setting cannot work
        import torch
        torch.save({"global_step": 4, "state_dict": {}}, os.path.join(trial, "ckpts", "last.ckpt"))
        write(phase="export", step=4)
        fail("export", "IsosurfaceError", "The density never crosses the isosurface threshold 10", 1,
             repeats=True, phase="export")
    if what == "export-ok":
        assert "--export" in args and "--train" not in args, args
        finished(); sys.exit(0)
    if what == "oom":
        fail("oom", "OutOfMemoryError", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1)
    if what == "crash":
        ckpt(); print("Traceback (most recent call last):\\nRuntimeError: worker exploded")
        fail("crash", "RuntimeError", "RuntimeError: worker exploded", 1)
    if what == "config":
        print("error: system.optimizer.name: torch.optim has no 'Adamm'.")
        fail("config", "ConfigError", "system.optimizer.name: torch.optim has no 'Adamm'.", 2)
    if what == "hang":
        def stop(signum, frame):
            ckpt(); print("Interrupted: saved checkpoint", flush=True)
            fail("interrupted", "KeyboardInterrupt", "KeyboardInterrupt", 130)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        write(phase="train", step=1, max_steps=100)
        print("step 1/100", flush=True)
        time.sleep(60)
        sys.exit(3)
    # the log lies; the status tells
    if what == "lie-ok":
        print("torch.OutOfMemoryError: CUDA out of memory\\nerror: non-finite loss: loss = nan", flush=True)
        finished(); sys.exit(0)
    if what == "lie-done":
        print("Done. Outputs in", trial, flush=True)
        write(phase="test", step=4)
        fail("crash", "RuntimeError", "RuntimeError: the turntable writer died", 0)
    if what == "lie-nan":
        print("error: non-finite loss: loss_sds = nan at step 3.", flush=True)
        fail("config", "ImageLoadError", "Image not found: teapot.png.", 2)
    if what == "nan":
        print("Done. Outputs in", trial, flush=True)
        write(phase="train", step=3)
        fail("nonfinite", "NonFiniteLossError", "non-finite loss: loss_sds = nan at step 3.", 1)
    if what == "stale":  # a status of another run: this attempt died before writing its own
        print("Done. Outputs in", trial, flush=True)
        write(run_id="an-earlier-attempt", state="finished", exit_code=0, outputs=outputs())
        sys.exit(0)
    if what == "segv":
        print("Done. Outputs in", trial, flush=True)
        write(phase="train", step=2)
        os.kill(os.getpid(), signal.SIGSEGV)
''')


class FakeLauncher(LocalLauncher):
    """Runs the fake trainer instead of ``python -m threestudio_like.cli``; records commands."""

    def __init__(self, script: Path, workers: int = 1) -> None:
        super().__init__([], workers=workers)
        self.script = script
        self.commands: List[List[str]] = []

    def start(self, slot, job_id, cmd, ckpt, env, log_path):
        assert cmd[1:3] == ["-m", "threestudio_like.cli"]
        fake = [sys.executable, str(self.script), *cmd[3:]]
        self.commands.append(with_resume(fake, ckpt))
        return super().start(slot, job_id, fake, ckpt, env, log_path)


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    return script


def _fake_batch(tmp_path: Path, jobs: List[Dict[str, Any]], **defaults: Any):
    doc = {"name": "fake", "defaults": {"config": "demo.yaml", "retries": 2, "retry_delay": 0, **defaults},
           "jobs": jobs}
    return load_job_file(_write_jobs(tmp_path / "jobs.yaml", doc), output_dir=tmp_path / "batch")


def test_failures_are_retried_with_backoff_and_never_stop_the_queue(tmp_path, fake):
    spec = _fake_batch(tmp_path, [
        {"name": "oom-then-ok", "env": {"FAKE_PLAN": "oom,oom,ok"},
         "overrides": ["data.batch_size=4", "system.renderer.eval_chunk_size=1024"]},
        {"name": "crash-then-ok", "env": {"FAKE_PLAN": "crash,ok"}},
        {"name": "config-error", "env": {"FAKE_PLAN": "config"}},
        {"name": "always-crashes", "env": {"FAKE_PLAN": "crash"}, "retries": 1},
        {"name": "fine"},
    ])
    launcher = FakeLauncher(fake)
    code = Runner(spec, launcher, poll_interval=0.05, progress_every=1000).run()
    assert code == 1
    state = _state(tmp_path / "batch")
    jobs = state["jobs"]
    assert {k: v["status"] for k, v in jobs.items()} == {
        "oom-then-ok": "done", "crash-then-ok": "done", "config-error": "failed",
        "always-crashes": "failed", "fine": "done"}
    oom = jobs["oom-then-ok"]
    assert [a["outcome"] for a in oom["attempts"]] == ["oom", "oom", "ok"]
    assert [a["overrides_added"] for a in oom["attempts"]] == [
        [], ["data.batch_size=2", "system.renderer.eval_chunk_size=512"],
        ["data.batch_size=1", "system.renderer.eval_chunk_size=256"]]
    assert oom["result"]["final_loss"] == 0.25 and oom["result"]["steps"] == 4
    assert oom["result"]["meshes"] == {"glb": "trials/oom-then-ok/save/it4-export/model.glb",
                                       "obj": "trials/oom-then-ok/save/it4-export/model.obj"}
    crash = jobs["crash-then-ok"]
    assert [a["outcome"] for a in crash["attempts"]] == ["crash", "ok"]
    resume_cmds = [c for c in launcher.commands if "crash-then-ok.yaml" in " ".join(c)]
    assert not any(a.startswith("resume=") for a in resume_cmds[0])
    assert resume_cmds[1][-1].endswith("trials/crash-then-ok/ckpts/last.ckpt")   # resumed
    cfg_err = jobs["config-error"]
    assert len(cfg_err["attempts"]) == 1 and "torch.optim has no 'Adamm'" in cfg_err["error"]  # not retried
    always = jobs["always-crashes"]
    assert [a["outcome"] for a in always["attempts"]] == ["crash", "crash"]
    assert always["error"] == "RuntimeError: worker exploded"
    summary = json.loads((tmp_path / "batch" / "summary.json").read_text())
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 3, "failed": 2}
    assert (tmp_path / "batch" / "index.html").is_file()
    # the queue went on in job-file order after each failure
    order = [Path(c[c.index("--config") + 1]).stem for c in launcher.commands]
    assert order.index("fine") > order.index("always-crashes") > order.index("config-error")


def test_backoff_delay_lets_other_jobs_go_first(tmp_path, fake):
    spec = _fake_batch(tmp_path, [{"name": "flaky", "env": {"FAKE_PLAN": "crash,ok"}, "retry_delay": 2.0},
                                  {"name": "second"}])
    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, poll_interval=0.05, progress_every=1000).run() == 0
    order = [Path(c[c.index("--config") + 1]).stem for c in launcher.commands]
    assert order == ["flaky", "second", "flaky"]
    attempts = _state(tmp_path / "batch")["jobs"]["flaky"]["attempts"]
    assert attempts[1]["started"] - attempts[0]["ended"] >= 1.9


def test_ctrl_c_stops_cleanly_and_rerun_finishes(tmp_path, fake):
    spec = _fake_batch(tmp_path, [{"name": "done-first"}, {"name": "long", "env": {"FAKE_PLAN": "hang,ok"}},
                                  {"name": "later"}])
    batch = tmp_path / "batch"
    runner = Runner(spec, FakeLauncher(fake), poll_interval=0.05, progress_every=1000)
    seen = []

    def interrupt_when_long_runs():
        deadline = time.time() + 30
        while time.time() < deadline:
            try:  # the progress the view shows, read from the attempt's status.json
                seen.append(runner.job_step("long"))
            except (KeyError, IndexError):  # not prepared yet
                pass
            if seen and seen[-1] == "1/100":
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_when_long_runs)
    thread.start()
    code = runner.run()
    thread.join()
    assert code == 130
    assert seen[-1] == "1/100"
    jobs = _state(batch)["jobs"]
    assert jobs["done-first"]["status"] == "done"
    assert jobs["long"]["status"] == "pending"
    assert jobs["long"]["attempts"][-1]["outcome"] == "interrupted"
    assert jobs["long"]["failures"] == 0                          # an interruption is not a failure
    assert jobs["later"]["status"] == "pending" and not jobs["later"]["attempts"]
    assert (batch / "trials" / "long" / "ckpts" / "last.ckpt").is_file()
    assert "Interrupted: saved checkpoint" in (batch / "logs" / "long.log").read_text()

    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, poll_interval=0.05, progress_every=1000).run() == 0
    ran = [Path(c[c.index("--config") + 1]).stem for c in launcher.commands]
    assert ran == ["long", "later"]                               # done jobs are skipped
    assert launcher.commands[0][-1].startswith("resume=")         # the interrupted one resumes
    assert all(j["status"] == "done" for j in _state(batch)["jobs"].values())


def test_changed_jobs_restart_and_redo(tmp_path, fake, capsys):
    spec = _fake_batch(tmp_path, [{"name": "a"}, {"name": "b", "env": {"FAKE_PLAN": "config"}}])
    assert Runner(spec, FakeLauncher(fake), poll_interval=0.05, progress_every=1000).run() == 1
    # edit the job file: the failed job gets a new override, the done one too
    spec = _fake_batch(tmp_path, [{"name": "a", "overrides": ["trainer.max_steps=7"]},
                                  {"name": "b", "overrides": ["trainer.max_steps=7"]}])
    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, poll_interval=0.05, progress_every=1000).run() == 0
    out = capsys.readouterr().out
    assert "job 'a' changed since it finished; kept" in out
    assert [Path(c[c.index("--config") + 1]).stem for c in launcher.commands] == ["b"]
    assert (tmp_path / "batch" / "trials" / "b.old-1").is_dir()   # the old attempt is kept aside
    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, redo=["a"], poll_interval=0.05, progress_every=1000).run() == 0
    assert [Path(c[c.index("--config") + 1]).stem for c in launcher.commands] == ["a"]


def test_repeating_failures_are_not_retried_and_retry_failed_only_reexports(tmp_path, fake, capsys):
    """An export that fails the same way every time is attempted once; after the export setting
    is fixed, --retry-failed keeps the trained model and runs only the export."""
    job = {"name": "e", "env": {"FAKE_PLAN": "export-fails,export-ok"}, "overrides": ["trainer.max_steps=4"]}
    spec = _fake_batch(tmp_path, [job], retries=3)
    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, poll_interval=0.05, progress_every=1000).run() == 1
    rec = BatchState.load(tmp_path / "batch").jobs["e"]
    assert len(launcher.commands) == 1 and rec["status"] == "failed"
    assert [a["outcome"] for a in rec["attempts"]] == ["repeats"]
    assert rec["attempts"][0]["failed_phase"] == "export"
    assert "FAILED e [repeats] after 1 failure(s): The density never crosses" in capsys.readouterr().out

    job["overrides"] = ["trainer.max_steps=4", "system.geometry.isosurface_threshold=5"]
    spec = _fake_batch(tmp_path, [job], retries=3)
    launcher = FakeLauncher(fake)
    assert Runner(spec, launcher, retry_failed=True, poll_interval=0.05, progress_every=1000).run() == 0
    out = capsys.readouterr().out
    assert "changed only settings used after training" in out and "export only" in out
    assert "--export" in launcher.commands[0] and "--train" not in launcher.commands[0]
    assert not (tmp_path / "batch" / "trials" / "e.old-1").exists()   # not retrained
    assert BatchState.load(tmp_path / "batch").jobs["e"]["status"] == "done"


def test_a_training_change_still_starts_afresh(tmp_path, fake):
    spec = _fake_batch(tmp_path, [{"name": "t", "env": {"FAKE_PLAN": "export-fails,ok"}}], retries=0)
    Runner(spec, FakeLauncher(fake), poll_interval=0.05, progress_every=1000).run()
    spec = _fake_batch(tmp_path, [{"name": "t", "env": {"FAKE_PLAN": "export-fails,ok"},
                                   "overrides": ["system.optimizer.args.lr=0.001"]}], retries=0)
    launcher = FakeLauncher(fake)
    Runner(spec, launcher, retry_failed=True, poll_interval=0.05, progress_every=1000).run()
    assert (tmp_path / "batch" / "trials" / "t.old-1").is_dir()
    assert "--train" in launcher.commands[0]


def test_outcomes_follow_the_status_not_the_log(tmp_path, fake):
    """Each job prints text that the old log matching would have misread ("Done. Outputs in",
    "non-finite loss", "out of memory"); the outcome follows the attempt's status.json, and the
    exit status alone where the attempt wrote none of its own."""
    spec = _fake_batch(tmp_path, [
        {"name": "lie-ok", "env": {"FAKE_PLAN": "lie-ok"}},
        {"name": "lie-done", "env": {"FAKE_PLAN": "lie-done"}},
        {"name": "lie-nan", "env": {"FAKE_PLAN": "lie-nan"}},
        {"name": "nan", "env": {"FAKE_PLAN": "nan"}},
        {"name": "stale", "env": {"FAKE_PLAN": "stale"}},
        {"name": "segv", "env": {"FAKE_PLAN": "segv"}},
    ], retries=0)
    assert Runner(spec, FakeLauncher(fake), poll_interval=0.05, progress_every=1000).run() == 1
    batch = tmp_path / "batch"
    jobs = _state(batch)["jobs"]
    got = {k: (v["status"], v["attempts"][-1]["outcome"], v["error"]) for k, v in jobs.items()}
    assert got == {
        "lie-ok": ("done", "ok", None),
        "lie-done": ("failed", "crash", "RuntimeError: the turntable writer died"),
        "lie-nan": ("failed", "config", "Image not found: teapot.png."),
        "nan": ("failed", "nan", "non-finite loss: loss_sds = nan at step 3."),
        "stale": ("failed", "crash", "exited with status 0 without a status"),
        "segv": ("failed", "crash", "killed by SIGSEGV before finishing (phase train, step 2/4)"),
    }
    assert all(len(v["attempts"]) == 1 for v in jobs.values())
    assert jobs["lie-nan"]["attempts"][0]["error_category"] == "config"
    assert jobs["lie-ok"]["result"]["final_loss"] == 0.25
    # each attempt had its own run id, and the status it wrote carries it
    run_ids = [v["attempts"][0]["run_id"] for v in jobs.values()]
    assert len(set(run_ids)) == len(run_ids)
    status = json.loads((batch / "trials" / "lie-ok" / "status.json").read_text())
    assert status["run_id"] == jobs["lie-ok"]["attempts"][0]["run_id"]
    summary = json.loads((batch / "summary.json").read_text())
    errors = {j["id"]: j["error"] for j in summary["jobs"]}
    assert errors["lie-nan"] == "Image not found: teapot.png."
    assert "[config] Image not found: teapot.png." in (batch / "index.html").read_text()


# ------------------------------------------------------------------------------------------
# acceptance: the real demo at toy size


def _tiny_jobs_file(path: Path, jobs: List[Dict[str, Any]], **defaults: Any) -> Path:
    doc = {"name": "acceptance",
           "defaults": {"config": "demo.yaml", "overrides": list(TINY_OVERRIDES), "retries": 0,
                        "retry_delay": 0, **defaults},
           "jobs": jobs}
    return _write_jobs(path, doc)


def _run_batch_process(cmd: List[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_four_job_batch_then_kill_and_resume(tmp_path):
    """The acceptance run, in one sequence (each phase builds on the previous batch folder):

    1. a 4-job batch in which one job diverges (NaN loss) finishes the other three and records
       the failure; its gallery opens in headless Chromium with every card, video and link;
    2. a long job is added to the job file; the runner is SIGKILLed while it trains;
    3. re-running completes the batch: finished jobs are not redone, the failed one is not
       retried, and the interrupted job resumes from its checkpoint.
    """
    from test_gallery import check_gallery_in_chromium, chromium

    jobs_file = tmp_path / "jobs.yaml"
    jobs = [
        {"name": "alpha"},
        {"name": "diverges", "overrides": ["system.loss.lambda_sds=.nan"]},
        {"name": "gamma", "seed": 3},
        {"name": "delta", "seed": 4, "export": ["glb", "ply"]},
    ]
    _tiny_jobs_file(jobs_file, jobs)
    batch = tmp_path / "batch"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "launch.py"), "--batch", str(jobs_file), "--out", str(batch),
           "--progress-every", "1000"]

    # 1. four jobs, one fails
    t0 = time.time()
    assert cli_main(cmd[2:] + ["--workers", "2"]) == 1
    t_four = time.time() - t0
    state = _state(batch)["jobs"]
    assert {k: v["status"] for k, v in state.items()} == {
        "alpha": "done", "diverges": "failed", "gamma": "done", "delta": "done"}
    bad = state["diverges"]
    assert bad["attempts"][-1]["outcome"] == "nan" and "non-finite loss" in bad["error"]
    for job_id in ("alpha", "gamma", "delta"):
        rec = state[job_id]
        assert _ckpt_step(batch / rec["trial_dir"] / "ckpts" / "last.ckpt") == 4
        assert rec["result"]["steps"] == 4 and rec["result"]["final_loss"] is not None
        assert rec["result"]["video"] == f"trials/{job_id}/save/it4-test.mp4"
        assert rec["result"]["thumbnail"] == f"trials/{job_id}/save/it4-test/0.png"
        assert rec["seconds"] > 0 and len(rec["attempts"]) == 1
    assert set(state["delta"]["result"]["meshes"]) == {"glb", "ply"}
    assert set(state["alpha"]["result"]["meshes"]) == {"glb", "obj", "ply", "usdz"}  # the default: every format
    seeds = {k: yaml.safe_load((batch / "trials" / k / "configs" / "parsed.yaml").read_text())["seed"]
             for k in ("alpha", "gamma", "delta")}
    assert seeds == {"alpha": 0, "gamma": 3, "delta": 4}
    summary = json.loads((batch / "summary.json").read_text())
    assert summary["counts"]["done"] == 3 and summary["counts"]["failed"] == 1
    assert [j["id"] for j in summary["jobs"]] == ["alpha", "diverges", "gamma", "delta"]
    if chromium():
        check_gallery_in_chromium(batch, n_cards=4, n_videos=3)
    finished = {k: v["attempts"] for k, v in state.items()}

    # 2. add a long job; kill the runner (SIGKILL) once it has a checkpoint
    jobs.append({"name": "long", "overrides": ["trainer.max_steps=80", "checkpoint.every_n_train_steps=5",
                                               "trainer.val_check_interval=1000"]})
    _tiny_jobs_file(jobs_file, jobs)
    t0 = time.time()
    runner = _run_batch_process(cmd)
    ckpt = batch / "trials" / "long" / "ckpts" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.is_file():
        assert runner.poll() is None, runner.stdout.read()
        time.sleep(0.2)
    assert ckpt.is_file()
    child_pid = _state(batch)["jobs"]["long"]["attempts"][-1]["pid"]
    runner.kill()                                   # no chance to clean up
    runner.wait()
    deadline = time.time() + 60                     # the job gets SIGTERM, checkpoints and exits
    while time.time() < deadline and alive(child_pid):
        time.sleep(0.2)
    assert not alive(child_pid)
    killed_at = _ckpt_step(ckpt)
    assert 5 <= killed_at < 80
    assert _state(batch)["jobs"]["long"]["status"] == "running"   # as the dead runner left it

    # 3. re-run: completes without redoing anything finished; the long job resumes
    rerun = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    t_resume = time.time() - t0
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr       # 1: "diverges" stays failed
    state = _state(batch)["jobs"]
    for job_id, attempts in finished.items():
        assert state[job_id]["attempts"] == attempts, job_id       # not redone, not retried
    long = state["long"]
    assert long["status"] == "done"
    assert [a["outcome"] for a in long["attempts"]] == ["interrupted", "ok"]
    assert long["attempts"][1]["resumed_from_step"] == killed_at
    assert f"resuming from step {killed_at}" in rerun.stdout
    assert _ckpt_step(ckpt) == 80 and long["result"]["steps"] == 80
    cmds = (batch / "trials" / "long" / "cmd.txt").read_text().splitlines()
    assert len(cmds) == 2 and "resume=" in cmds[1] and "resume=" not in cmds[0]
    loss, step = read_final_loss(batch / "trials" / "long" / "logs" / "csv" / "metrics.csv")
    assert step == 79 and loss is not None
    print(f"\n4-job batch: {t_four:.1f}s; kill at step {killed_at} + resume: {t_resume:.1f}s")


class _Planted:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, creating the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_checkpoint_is_refused_never_run_and_not_retried(tmp_path):
    """A ``last.ckpt`` carrying a code payload (zip and legacy torch formats) in a job's trial:
    the runner reads its step safely, the training refuses it as resume= (exit 2, category
    checkpoint), the job fails once as ``config`` naming the file, and the payload never runs."""
    marker = tmp_path / "payload-ran"
    jobs_file = _tiny_jobs_file(tmp_path / "jobs.yaml", [{"name": "zip"}, {"name": "legacy"}], retries=2)
    batch = tmp_path / "batch"
    for job_id, zipped in (("zip", True), ("legacy", False)):
        ckpt = batch / "trials" / job_id / "ckpts" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        torch.save({"global_step": 3, "state_dict": {}, "hook": _Planted(marker)}, ckpt,
                   _use_new_zipfile_serialization=zipped)
    code = cli_main(["--batch", str(jobs_file), "--out", str(batch), "--progress-every", "1000"])
    assert code == 1
    assert not marker.exists(), "the planted payload ran"
    jobs = _state(batch)["jobs"]
    for job_id in ("zip", "legacy"):
        rec = jobs[job_id]
        assert rec["status"] == "failed" and len(rec["attempts"]) == 1, rec   # attempted once, not retried
        attempt = rec["attempts"][0]
        assert attempt["outcome"] == "config" and attempt["error_category"] == "checkpoint"
        assert attempt["rc"] == 2 and attempt["resumed_from_step"] is None
        assert f"trials/{job_id}/ckpts/last.ckpt" in rec["error"] and "refused" in rec["error"], rec["error"]
        log = (batch / "logs" / f"{job_id}.log").read_text()
        assert "a checkpoint whose step cannot be read" in log
    assert not marker.exists()
    # the files were live: an unsafe load would have run the payload
    torch.load(batch / "trials" / "legacy" / "ckpts" / "last.ckpt", weights_only=False)
    assert marker.exists()


def test_input_image_removed_after_validation_is_a_config_failure(tmp_path):
    """A real input error found at run time (the image is gone when the job starts) is read
    from the job's status as ``config`` and not retried; the queue goes on."""
    from PIL import Image

    image = tmp_path / "teapot.png"
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 120, 60, 255)
    Image.fromarray(rgba).save(image)
    jobs_file = _write_jobs(tmp_path / "jobs.yaml", {"jobs": [
        {"name": "teapot", "config": "demo-sjc.yaml", "image": str(image), "retries": 2, "retry_delay": 0}]})
    spec = load_job_file(jobs_file, output_dir=tmp_path / "batch")     # validated: the image is there
    image.unlink()
    assert Runner(spec, LocalLauncher([], workers=1), poll_interval=0.1, progress_every=1000).run() == 1
    rec = _state(tmp_path / "batch")["jobs"]["teapot"]
    assert rec["status"] == "failed" and len(rec["attempts"]) == 1
    attempt = rec["attempts"][0]
    assert attempt["outcome"] == "config" and attempt["rc"] == 2 and attempt["error_category"] == "config"
    assert "teapot.png" in rec["error"] and rec["input_image"] is None


# ------------------------------------------------------------------------------------------
# SLURM through submitit


def test_slurm_launcher_with_submitit_local_executor(tmp_path):
    pytest.importorskip("submitit", reason="submitit not installed (pip install -e '.[slurm]')")
    jobs = _tiny_jobs_file(tmp_path / "jobs.yaml", [{"name": "on-cluster"}])
    batch = tmp_path / "batch"
    code = cli_main(["--batch", str(jobs), "--out", str(batch), "--launcher", "slurm",
                     "--slurm-cluster", "local", "--progress-every", "1000"])
    assert code == 0
    rec = _state(batch)["jobs"]["on-cluster"]
    assert rec["status"] == "done" and rec["attempts"][0]["slurm_job_id"]
    assert rec["attempts"][0]["worker"] == "slurm0"
    job_id = rec["attempts"][0]["slurm_job_id"]
    assert (batch / "slurm" / f"{job_id}_submitted.pkl").is_file()
    assert (batch / "slurm" / f"{job_id}_0_result.pkl").is_file()
    assert _ckpt_step(batch / "trials" / "on-cluster" / "ckpts" / "last.ckpt") == 4
    assert "[slurm]" in (batch / "logs" / "on-cluster.log").read_text()
    # re-running resumes nothing: the job is done
    assert cli_main(["--batch", str(jobs), "--out", str(batch), "--launcher", "slurm",
                     "--slurm-cluster", "local", "--progress-every", "1000"]) == 0
    assert len(_state(batch)["jobs"]["on-cluster"]["attempts"]) == 1


FAKE_SBATCH = """#!/bin/sh
# Records what would be submitted (the sbatch file) and answers like sbatch.
cp "$1" "{record}/submitted.sbatch"
echo "Submitted batch job 4242"
"""
FAKE_SCANCEL = """#!/bin/sh
echo "$@" >> "{record}/scancel.txt"
"""
FAKE_SRUN = """#!/bin/sh
echo "srun is only looked up, never run, in this test" >&2; exit 1
"""


def test_slurm_submission_with_a_fake_sbatch(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="submitit not installed (pip install -e '.[slurm]')")
    from threestudio_like.batch.slurm import SlurmLauncher

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL), ("srun", FAKE_SRUN)):
        (bindir / name).write_text(body.format(record=tmp_path))
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    launcher = SlurmLauncher(tmp_path / "slurm", partition="gpu", time_min=90, gpus=1, cpus=6,
                             mem_gb=40, account="art", setup=["source ~/venv/bin/activate"], max_parallel=4)
    assert launcher.slots == ["slurm0", "slurm1", "slurm2", "slurm3"]
    cmd = [sys.executable, "-m", "threestudio_like.cli", "--config", "/b/configs/corgi.yaml", "--train"]
    handle = launcher.start("slurm0", "corgi", cmd, "/b/trials/corgi/ckpts/last.ckpt", {}, str(tmp_path / "corgi.log"))
    assert handle.ident == {"slurm_job_id": "4242"}
    sbatch = (tmp_path / "submitted.sbatch").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=40GB", "#SBATCH --account=art",
                 "#SBATCH --job-name=tsl-corgi", "#SBATCH --nodes=1", "source ~/venv/bin/activate",
                 "submitit.core._submit"):
        assert line in sbatch, line
    handle.interrupt()
    assert "4242" in (tmp_path / "scancel.txt").read_text()


def test_slurm_preemption_checkpoints_and_requeues(tmp_path, fake):
    """At the time limit (SIGUSR2 before it, as SLURM sends before a preemption too) the training
    saves its checkpoint, submitit requeues the same job and the requeued attempt resumes."""
    pytest.importorskip("submitit", reason="submitit not installed (pip install -e '.[slurm]')")
    from threestudio_like.batch.slurm import SlurmLauncher

    launcher = SlurmLauncher(tmp_path / "slurm", cluster="local")
    # a 20 s time limit with the warning signal 12 s before it, as submitit's own tests do
    launcher.executor._executor.update_parameters(timeout_min=20 / 60, signal_delay_s=12)  # (sub-minute: below AutoExecutor)
    trial = tmp_path / "trial"
    config = tmp_path / "job.yaml"
    config.write_text(f"trial_dir: {trial}\n")
    log = tmp_path / "job.log"
    cmd = [sys.executable, str(fake), "--config", str(config), "--train"]
    handle = launcher.start("slurm0", "p", cmd, str(trial / "ckpts" / "last.ckpt"), {"FAKE_PLAN": "hang,ok"}, str(log))
    deadline = time.time() + 60
    while time.time() < deadline and "step 1/100" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    result = None
    while time.time() < deadline and result is None:
        result = handle.poll()
        time.sleep(0.1)
    assert result is not None and result.rc == 0, log.read_text()
    text = log.read_text()
    assert "Interrupted: saved checkpoint" in text
    assert text.count("[slurm]") == 2 and json.loads((trial / "status.json").read_text())["state"] == "finished"
    second = text.split("[slurm]")[2].splitlines()[0]
    assert second.endswith(f"resume={trial / 'ckpts' / 'last.ckpt'}")
