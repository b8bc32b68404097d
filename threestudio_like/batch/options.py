"""The ``--batch`` command line: its options and the ``--check`` listing.

Kept apart from :mod:`.runner` so that the option list (long, and mostly the SLURM
launcher's) does not crowd the runner's logic; :func:`.runner.main` parses with it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List, TextIO

from threestudio_like.batch.jobs import BatchSpec
from threestudio_like.batch.local import LocalLauncher, detect_gpus


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (0 workers would wait forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``--batch`` command line."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        allow_abbrev=False,  # --gpu is not --gpus: a misspelt option is refused, never guessed
        description="Run a queue of jobs (prompts/images) overnight; resume by re-running the same command. "
                    "Extra key=value arguments override the config of every job. See docs/batch.md.",
    )
    parser.add_argument("--batch", required=True, metavar="JOBS", help="job file: YAML, or plain text (one prompt per line)")
    parser.add_argument("--config", help="default recipe for jobs that name none (needed by a plain-text job file)")
    parser.add_argument("--out", help="batch folder (default: <output_dir>/<name> from the job file, "
                                      "outputs/batches/<job file name>)")
    parser.add_argument("--gpus", help="GPU ids, one worker each, e.g. 0,1,2,3; 'cpu' to run on CPU "
                                       "(default: every visible GPU, else one CPU worker)")
    parser.add_argument("--workers", type=positive_int, default=1, help="number of CPU workers when there is no GPU (default 1)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local worker processes (default) or SLURM through submitit")
    parser.add_argument("--retry-failed", action="store_true", help="give failed jobs a new set of attempts")
    parser.add_argument("--redo", default="", metavar="IDS", help="comma-separated job ids to run again from scratch")
    parser.add_argument("--check", action="store_true", help="validate the job file, list the jobs and exit")
    parser.add_argument("--gallery-only", action="store_true", help="rewrite index.html/summary.json from the state and exit")
    parser.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines off a terminal")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="seconds a stopped job gets to save its checkpoint before it is killed")
    slurm = parser.add_argument_group("slurm (with --launcher slurm; needs `pip install submitit`)")
    slurm.add_argument("--slurm-partition")
    slurm.add_argument("--slurm-time", type=positive_int, default=24 * 60, help="minutes per job (default 1440)")
    slurm.add_argument("--slurm-gpus", type=positive_int, default=1, help="GPUs per job (default 1)")
    slurm.add_argument("--slurm-cpus", type=positive_int, default=8, help="CPUs per job (default 8)")
    slurm.add_argument("--slurm-mem-gb", type=positive_int, help="memory per job")
    slurm.add_argument("--slurm-account")
    slurm.add_argument("--slurm-qos")
    slurm.add_argument("--slurm-constraint")
    slurm.add_argument("--slurm-setup", action="append", default=[],
                       help="shell line run before each job, e.g. 'source ~/venv/bin/activate' (repeatable)")
    slurm.add_argument("--slurm-max-parallel", type=positive_int, default=32, help="jobs queued on the cluster at once")
    slurm.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm",
                       help="submitit executor: 'local' runs the same submissions on this machine (testing)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def print_check(spec: BatchSpec, stream: TextIO) -> None:
    """``--check``: the validated jobs, one line each."""
    print(f"batch '{spec.name}' -> {spec.output_dir}: {len(spec.jobs)} job(s), all valid", file=stream)
    for job in spec.jobs:
        cond = f'prompt "{job.prompt}"' if job.prompt else (f"image {job.image}" if job.image else "no condition")
        print(f"  {job.id:<32} job {job.index:<3} {Path(job.config).name:<24} seed {job.seed:<5} {cond}", file=stream)


def make_launcher(args: argparse.Namespace, batch_dir: Path) -> Any:
    """The launcher the options ask for: SLURM (``--launcher slurm``) or local workers, one per
    GPU of ``--gpus`` (``cpu``: one CPU worker; default: the GPUs found)."""
    if args.launcher == "slurm":
        from threestudio_like.batch.slurm import SlurmLauncher

        return SlurmLauncher.from_args(batch_dir / "slurm", args)
    if args.gpus and args.gpus.strip().lower() == "cpu":
        gpus: List[str] = []
    elif args.gpus:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    else:
        gpus = detect_gpus()
    return LocalLauncher(gpus, workers=args.workers)
