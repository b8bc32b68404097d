"""The batch runner: ``python launch.py --batch jobs.yaml [--gpus 0,1,2,3] [key=value ...]``.

One worker per GPU (one on CPU) takes pending jobs in job-file order; each job runs as its own
``python -m threestudio_like.cli --config <batch>/configs/<id>.yaml --train`` process (a crash
or an out-of-memory error kills only that job), writing to its own trial directory
``<batch>/trials/<id>/`` and log ``<batch>/logs/<id>.log``. Progress is kept in
``<batch>/state.json`` (see :mod:`.state`), so re-running the same command resumes: done jobs
are skipped, interrupted ones continue from ``ckpts/last.ckpt``.

Each attempt gets its own run id (``$THREESTUDIO_LIKE_RUN_ID``) and writes its status to
``<trial>/status.json`` (``$THREESTUDIO_LIKE_STATUS_FILE``). Its outcome is decided from that
status (if this attempt wrote it) and the exit status only (:func:`.outcome.classify`); the log is
for people and is never parsed. Failures are retried up to ``retries`` times, each after
``retry_delay * 2**(failures-1)`` seconds (at most an hour) while other jobs go on:

=========== ============================================================ ==============================
outcome     decided by                                                   next attempt
=========== ============================================================ ==============================
ok          status ``finished`` and exit status 0                        none: the job is done
interrupted the runner was stopping (Ctrl-C, SIGTERM, SIGHUP)            resumes on the next run
timeout     ran past the job's ``timeout``                               resumes from the checkpoint
oom         error category ``oom``, or killed by SIGKILL (-9 or 137)     resumes, ``oom_halve`` keys halved
nan         error category ``nonfinite``                                 resumes from the last good ckpt
config      error exit code 2 (categories config, weights, checkpoint)   not retried
repeats     the error says the same command fails the same way            not retried
crash       anything else, also no status written by this attempt        resumes from the checkpoint
=========== ============================================================ ==============================

The error shown in the state and the gallery is the status's ``error.message``; an attempt that
wrote no status of its own is described by its exit status ("killed by SIGSEGV", "exited with
status 1 without a status").

A job whose training finished but whose export failed runs only ``--export`` from its checkpoint
next time: ``--retry-failed`` after fixing an export setting re-exports without retraining.
Changing only settings read after training (:data:`.jobs.FINISH_KEYS`) keeps the trained model.

Ctrl-C (or SIGTERM/SIGHUP) asks every running job to save a checkpoint and exit, marks them
pending and exits with status 130; a second Ctrl-C kills them at once (they keep their last
periodic checkpoint). If the runner itself is killed, its jobs get SIGTERM (Linux), checkpoint
and exit; the next run finds them marked running, makes sure they are gone and resumes them.
Exit status: 0 all jobs done, 1 some failed, 2 bad job file / batch locked, 130 interrupted.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO

from threestudio_like.batch.gallery import collect_result, format_seconds, write_gallery
from threestudio_like.batch.jobs import BatchSpec, Job, load_job_file
from threestudio_like.batch.options import build_parser, make_launcher, print_check
from threestudio_like.batch.outcome import (AttemptResult, attempt_status, classify, export_only, failed_phase,
                                            oom_overrides, retry_delay)
from threestudio_like.batch.progress import ProgressView, status_progress
from threestudio_like.batch.state import BatchLock, BatchState, new_job_record, now
from threestudio_like.errors import BatchLockedError, JobFileError, SlurmUnavailable, did_you_mean
from threestudio_like.run_status import ENV_RUN_ID, ENV_STATUS_FILE, STATUS_FILE
from threestudio_like.utils.files import atomic_write_text


# ------------------------------------------------------------------------------------------
# the runner


@dataclass
class _Running:
    """An attempt in progress on a worker slot."""

    job_id: str
    slot: str
    handle: Any
    started: float
    attempt_no: int
    run_id: Optional[str]
    deadline: Optional[float] = None
    timed_out: bool = False
    kill_at: Optional[float] = None


class Runner:
    """Runs a validated batch to completion (or until stopped), keeping the state on disk."""

    def __init__(self, spec: BatchSpec, launcher: Any, *, retry_failed: bool = False,
                 redo: Sequence[str] = (), progress_every: float = 30.0, grace: float = 120.0,
                 poll_interval: float = 0.5, stream: Optional[TextIO] = None) -> None:
        self.spec = spec
        self.launcher = launcher
        self.batch_dir = Path(spec.output_dir).resolve()
        self.retry_failed = retry_failed
        self.redo = set(redo)
        self.progress_every = progress_every
        self.grace = grace
        self.poll_interval = poll_interval
        self.stream = stream or sys.stdout
        self.jobs: Dict[str, Job] = {job.id: job for job in spec.jobs}
        self.state = BatchState(self.batch_dir)
        self.running: Dict[str, _Running] = {}
        self._reattached: Dict[str, Any] = {}
        self._signals = 0
        self._stopping = False
        self.view: Optional[ProgressView] = None

    # ------------------------------------------------------------ paths
    def path(self, rel: str) -> Path:
        """A path inside the batch folder."""
        return self.batch_dir / rel

    # ------------------------------------------------------------ entry point
    def run(self) -> int:
        """Run the batch until every job is done or failed, or until stopped; the exit status."""
        self.batch_dir.mkdir(parents=True, exist_ok=True)
        with BatchLock(self.batch_dir):
            self.state = BatchState.load(self.batch_dir)
            self.view = ProgressView(self, self.stream, self.progress_every)
            previous = self._install_signal_handlers()
            try:
                self._prepare()
                code = self._loop()
            finally:
                if self.running:  # leaving on an unexpected error: stop the jobs cleanly first
                    self._abandon_running()
                self._restore_signal_handlers(previous)
                if self.state.data.get("runs"):
                    self.state.data["runs"][-1]["ended"] = now()
                self.state.save()
                index, _ = write_gallery(self.state)
                self.view.tick(force=True)
                self.view.close()
            print(f"Gallery: {index}", file=self.stream, flush=True)
        return code

    # ------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1

    def _install_signal_handlers(self) -> Dict[int, Any]:
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # not the main thread
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: Dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # ------------------------------------------------------------ preparation
    def _prepare(self) -> None:
        data = self.state.data
        data["batch"] = self.spec.name
        data["job_file"] = str(self.spec.source)
        data.setdefault("runs", []).append({"started": now(), "pid": os.getpid(), "launcher": self.launcher.describe()})
        copy = self.path("job_file" + self.spec.source.suffix)
        if copy.resolve() != self.spec.source:
            shutil.copyfile(self.spec.source, copy)
        data["order"] = [job.id for job in self.spec.jobs] + [i for i in data.get("order", []) if i not in self.jobs]
        for job in self.spec.jobs:
            self._prepare_job(job)
        for job_id, rec in self.state.jobs.items():
            rec["in_job_file"] = job_id in self.jobs
            if rec["status"] == "running" and job_id not in self.jobs:
                self._recover_stale(rec)
        self.state.save()
        write_gallery(self.state)
        counts = self.state.counts()
        self.view.event(f"batch '{self.spec.name}' in {self.batch_dir}: {len(self.jobs)} job(s), "
                        f"{counts['done']} already done; {self.launcher.describe()}")

    def _prepare_job(self, job: Job) -> None:
        from omegaconf import OmegaConf

        rec = self.state.jobs.get(job.id)
        spec_hash, train_hash = job.spec_hash(), job.train_hash()
        if rec is None:
            rec = self.state.jobs[job.id] = new_job_record(job.id, job.index)
        else:
            if rec["status"] == "running":
                self._recover_stale(rec)
            if job.id in self.redo:
                rec = self._reset(job.id, "--redo")
            elif rec["spec_hash"] and rec["spec_hash"] != spec_hash:
                if rec["status"] == "done":
                    self.view.event(f"note: job '{job.id}' changed since it finished; kept (re-run it with --redo {job.id})")
                    return
                if rec.get("train_hash") != train_hash:
                    rec = self._reset(job.id, "its settings changed")
                else:
                    self.view.event(f"note: job '{job.id}' changed only settings used after training; "
                                    "its trained model is kept")
            if rec["status"] == "failed" and self.retry_failed:
                rec.update(status="pending", failures=0, not_before=None, error=None, finished=None)
        rec.update(
            index=job.index, spec_hash=spec_hash, train_hash=train_hash,
            spec={**job.describe(), "seed": job.seed},
            config_file=f"configs/{job.id}.yaml", trial_dir=f"trials/{job.id}", log=f"logs/{job.id}.log",
            retries=job.retries,
        )
        if job.image:
            first = job.image if isinstance(job.image, str) else job.image[0]
            rel = f"inputs/{job.id}{Path(first).suffix.lower()}"
            if not self.path(rel).is_file() and os.path.isfile(first):  # gone since validation: the job
                self.path(rel).parent.mkdir(parents=True, exist_ok=True)  # itself reports it (a config error)
                shutil.copyfile(first, self.path(rel))
            rec["input_image"] = rel if self.path(rel).is_file() else None
        cfg = job.composed.copy()
        cfg.trial_dir = str(self.path(rec["trial_dir"]))
        atomic_write_text(self.path(rec["config_file"]), OmegaConf.to_yaml(cfg))
        self.path("logs").mkdir(exist_ok=True)

    def _reset(self, job_id: str, why: str) -> Dict[str, Any]:
        """Start a job afresh; its old trial directory is kept aside as ``<id>.old-<k>``."""
        trial = self.path(f"trials/{job_id}")
        if trial.exists():
            k = 1
            while self.path(f"trials/{job_id}.old-{k}").exists():
                k += 1
            trial.rename(self.path(f"trials/{job_id}.old-{k}"))
            self.view.event(f"job '{job_id}' starts afresh ({why}); previous trial kept as trials/{job_id}.old-{k}")
        rec = self.state.jobs[job_id] = new_job_record(job_id, self.state.jobs[job_id]["index"])
        return rec

    def _recover_stale(self, rec: Dict[str, Any]) -> None:
        """A job marked running by a runner that died: stop any leftover process; resume later."""
        attempt = rec["attempts"][-1] if rec["attempts"] else {}
        handle = self.launcher.reattach({**attempt, "config_file": str(self.path(rec["config_file"]))})
        if handle is not None:
            self._reattached[rec["id"]] = handle
            return
        ended = now()
        if attempt and attempt.get("outcome") is None:
            log = self.path(rec["log"])
            last_write = log.stat().st_mtime if log.is_file() else ended
            attempt.update(ended=ended, seconds=round(max(last_write - attempt["started"], 0.0), 2),
                           outcome="interrupted", error="the runner stopped while this job ran")
            rec["seconds"] += attempt["seconds"]
        rec["status"] = "pending"
        self.view.event(f"job '{rec['id']}' was left running by an earlier runner: it will resume")

    # ------------------------------------------------------------ scheduling
    def _next_job(self) -> Optional[Dict[str, Any]]:
        t = time.time()
        for rec in self.state.ordered():
            if rec["id"] in self.jobs and rec["status"] == "pending" and (rec.get("not_before") or 0) <= t:
                return rec
        return None

    def _has_work(self) -> bool:
        return any(rec["status"] == "pending" for rec in self.state.jobs.values() if rec["id"] in self.jobs)

    def _loop(self) -> int:
        # slurm jobs that kept running while no runner watched them
        for job_id, handle in self._reattached.items():
            rec = self.state.jobs[job_id]
            free = [s for s in self.launcher.slots if s not in self.running]
            slot = free[0] if free else f"reattached-{job_id}"
            attempt = rec["attempts"][-1]
            self.running[slot] = _Running(job_id, slot, handle, attempt["started"], attempt["n"],
                                          attempt.get("run_id"))
            self.view.event(f"watching {job_id} again (still running as {handle.ident})")
        handled = 0
        while True:
            if self._signals > handled:
                handled = self._signals
                self._stop(force=handled > 1)
            if not self._stopping:
                for slot in self.launcher.slots:
                    if slot in self.running:
                        continue
                    rec = self._next_job()
                    if rec is None:
                        break
                    self._start(slot, rec)
            self._poll()
            if not self.running and (self._stopping or not self._has_work()):
                break
            self.view.tick()
            time.sleep(self.poll_interval)
        if self._stopping:
            self.view.event("stopped; re-run the same command to continue")
            return 130
        counts = self.state.counts()
        failed = [r["id"] for r in self.state.with_status("failed") if r["id"] in self.jobs]
        self.view.event(f"batch finished: {counts['done']} done, {len(failed)} failed"
                        + (f" ({', '.join(failed)})" if failed else ""))
        return 1 if failed else 0

    def _stop(self, force: bool) -> None:
        if not self._stopping:
            self._stopping = True
            self.view.event(f"stopping: {len(self.running)} running job(s) save a checkpoint and exit "
                            f"(press Ctrl-C again to kill them now)")
            for run in self.running.values():
                run.handle.interrupt()
                run.kill_at = time.time() + self.grace
        elif force:
            self.view.event("killing the running job(s) now; they resume from their last periodic checkpoint")
            for run in self.running.values():
                run.handle.kill()

    def _abandon_running(self) -> None:
        """Interrupt every running job, wait for them (up to ``grace``) and mark them pending."""
        self._stopping = True
        for run in self.running.values():
            run.handle.interrupt()
        deadline = time.time() + self.grace
        while self.running and time.time() < deadline:
            self._poll()
            time.sleep(self.poll_interval)
        for run in list(self.running.values()):
            run.handle.kill()
            rec = self.state.jobs[run.job_id]
            rec["status"] = "pending"
            rec["attempts"][-1].update(ended=now(), outcome="interrupted")
        self.running.clear()

    def _start(self, slot: str, rec: Dict[str, Any]) -> None:
        from threestudio_like.models.checkpoints import checkpoint_step  # torch: only when a job starts

        job = self.jobs[rec["id"]]
        config_file = str(self.path(rec["config_file"]))
        trial = self.path(rec["trial_dir"])
        ckpt = str(trial / "ckpts" / "last.ckpt")
        has_ckpt = os.path.isfile(ckpt)
        resumed = checkpoint_step(ckpt) if has_ckpt else None
        extra = oom_overrides(config_file, job.oom_halve, rec.get("oom_count", 0))
        max_steps = job.composed.trainer.get("max_steps") if job.composed is not None else None
        mode = "--export" if export_only(rec["attempts"], max_steps, resumed) else "--train"
        cmd = [sys.executable, "-m", "threestudio_like.cli", "--config", config_file, mode, *extra]
        attempt_no = len(rec["attempts"]) + 1
        run_id = f"{job.id}-{attempt_no}-{uuid.uuid4().hex[:8]}"
        if mode == "--export":
            how = f"export only: training finished at step {resumed}"
        elif resumed is not None:
            how = f"resuming from step {resumed}"
        else:  # a checkpoint whose step cannot be read is refused by the training (a config failure)
            how = "resuming from a checkpoint whose step cannot be read" if has_ckpt else "from scratch"
        log_path = self.path(rec["log"])
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n===== attempt {attempt_no} on {slot} at {time.strftime('%Y-%m-%d %H:%M:%S')}, {how}"
                      + (f", back-off: {' '.join(extra)}" if extra else "") + f" (run id {run_id}) =====\n")
        offset = log_path.stat().st_size
        env = {**job.env, "PYTHONUNBUFFERED": "1", ENV_RUN_ID: run_id, ENV_STATUS_FILE: str(trial / STATUS_FILE)}
        handle = self.launcher.start(slot, job.id, cmd, ckpt, env, str(log_path))
        started = time.time()
        rec["attempts"].append({
            "n": attempt_no, "worker": slot, "run_id": run_id, "started": round(started, 3), "ended": None,
            "seconds": None, "rc": None, "outcome": None, "error": None, "error_category": None,
            "resumed_from_step": resumed, "overrides_added": extra, "log_offset": offset, **handle.ident,
        })
        rec["status"] = "running"
        rec["not_before"] = None
        rec["first_started"] = rec.get("first_started") or round(started, 3)
        self.running[slot] = _Running(job.id, slot, handle, started, attempt_no, run_id,
                                      deadline=started + job.timeout if job.timeout else None)
        self.state.save()
        self.view.event(f"start  {job.id} on {slot} (attempt {attempt_no}, {how}"
                        + (f", {' '.join(extra)}" if extra else "") + ")")

    def _poll(self) -> None:
        t = time.time()
        for slot, run in list(self.running.items()):
            result = run.handle.poll()
            if result is None:
                if run.deadline and t > run.deadline and not run.timed_out and not self._stopping:
                    run.timed_out = True
                    run.kill_at = t + self.grace
                    self.view.event(f"job {run.job_id} ran past its timeout: stopping it")
                    run.handle.interrupt()
                elif run.kill_at and t > run.kill_at:
                    run.handle.kill()
                    run.kill_at = t + 30
                continue
            del self.running[slot]
            self._finish(run, result)

    def _finish(self, run: _Running, result: AttemptResult) -> None:
        rec = self.state.jobs[run.job_id]
        job = self.jobs[run.job_id]
        ended = time.time()
        status = attempt_status(self.path(rec["trial_dir"]) / STATUS_FILE, run.run_id)
        outcome, error = classify(result.rc, status, timed_out=run.timed_out, stopping=self._stopping,
                                  launcher_error=result.error)
        seconds = round(ended - run.started, 2)
        attempt = rec["attempts"][-1]
        category = ((status or {}).get("error") or {}).get("category")
        attempt.update(ended=round(ended, 3), seconds=seconds, rc=result.rc, outcome=outcome, error=error,
                       error_category=category, failed_phase=failed_phase(status) if outcome != "ok" else None)
        rec["seconds"] = round(rec["seconds"] + seconds, 2)
        if outcome == "ok":
            rec.update(status="done", finished=round(ended, 3), error=None)
            rec["result"] = collect_result(self.batch_dir, rec["trial_dir"])
            loss = rec["result"].get("final_loss")
            self.view.event(f"done   {job.id} in {format_seconds(rec['seconds'])}"
                            + (f", final loss {loss:.4g}" if loss is not None else ""))
        elif outcome == "interrupted":
            rec["status"] = "pending"
            self.view.event(f"paused {job.id} (checkpoint kept)")
        else:
            rec["failures"] += 1
            rec["error"] = error
            if outcome == "oom":
                rec["oom_count"] = rec.get("oom_count", 0) + 1
            first_line = (error or "").splitlines()[0] if error else ""
            if outcome in ("config", "repeats") or rec["failures"] > job.retries:
                rec.update(status="failed", finished=round(ended, 3))
                rec["result"] = collect_result(self.batch_dir, rec["trial_dir"])
                self.view.event(f"FAILED {job.id} [{outcome}] after {rec['failures']} failure(s): {first_line}")
            else:
                delay = retry_delay(job.retry_delay, rec["failures"])
                rec.update(status="pending", not_before=round(ended + delay, 3))
                self.view.event(f"retry  {job.id} [{outcome}] in {format_seconds(delay)} "
                                f"({rec['failures']}/{job.retries} retries used): {first_line}")
        self.state.save()
        write_gallery(self.state)

    # ------------------------------------------------------------ progress
    def job_step(self, job_id: str) -> str:
        """Progress of a running job from its ``status.json``: ``57/600``, ``test 12/48``; ``-``
        before its attempt has written a status."""
        rec = self.state.jobs[job_id]
        run_id = rec["attempts"][-1].get("run_id") if rec.get("attempts") else None
        return status_progress(attempt_status(self.path(rec["trial_dir"]) / STATUS_FILE, run_id))

    def overview(self) -> str:
        """``done 3/10, running 2, failed 1, pending 4, ETA 1h02m``."""
        recs = [r for r in self.state.jobs.values() if r["id"] in self.jobs]
        done = [r for r in recs if r["status"] == "done"]
        n_failed = sum(r["status"] == "failed" for r in recs)
        n_pending = sum(r["status"] == "pending" for r in recs)
        eta = "-"
        if done and (n_pending or self.running):
            avg = sum(r["seconds"] for r in done) / len(done)
            t = time.time()
            left = n_pending * avg + sum(max(avg - (t - run.started), 0.1 * avg) for run in self.running.values())
            eta = format_seconds(left / max(len(self.launcher.slots), 1))
        return (f"done {len(done)}/{len(recs)}, running {len(self.running)}, failed {n_failed}, "
                f"pending {n_pending}, ETA {eta}")


# ------------------------------------------------------------------------------------------
# command line


def main(argv: Optional[Sequence[str]] = None, stream: Optional[TextIO] = None) -> int:
    """``launch.py --batch ...``; returns the exit status."""
    stream = stream or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = build_parser().parse_known_args(argv)
    unknown = [e for e in extras if e.startswith("-") or "=" not in e]
    if unknown:
        options = [o for a in build_parser()._actions for o in a.option_strings]
        hint = did_you_mean(unknown[0].split("=")[0], options)
        print(f"error: unknown argument(s) {unknown}; config overrides are key=value.{hint}", file=sys.stderr)
        return 2
    if not args.verbose:
        import warnings

        warnings.filterwarnings("ignore")
    try:
        spec = load_job_file(args.batch, config=args.config, overrides=extras, output_dir=args.out,
                             validate=not args.gallery_only)
    except JobFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print_check(spec, stream)
        return 0
    if args.gallery_only:
        state = BatchState.load(spec.output_dir)
        index, _ = write_gallery(state)
        print(f"Gallery: {index}", file=stream)
        return 0
    try:
        launcher = make_launcher(args, Path(spec.output_dir))
    except SlurmUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = Runner(spec, launcher, retry_failed=args.retry_failed,
                    redo=[r.strip() for r in args.redo.split(",") if r.strip()],
                    progress_every=args.progress_every, grace=args.grace, stream=stream)
    unknown_ids = sorted(runner.redo - set(runner.jobs))
    if unknown_ids:
        print(f"error: --redo names unknown job id(s) {unknown_ids}", file=sys.stderr)
        return 2
    try:
        return runner.run()
    except BatchLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
