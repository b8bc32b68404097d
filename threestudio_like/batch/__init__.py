"""Overnight batch production: a queue of text/image-to-3D jobs that survives the night.

``python launch.py --batch jobs.yaml [--gpus 0,1,2,3]`` validates a job file (:mod:`.entries`
checks each field, :mod:`.jobs` expands the entries into jobs and checks their configs), runs
every job in its own trial directory with one worker per GPU, one on CPU (:mod:`.local`), or on
SLURM through submitit (:mod:`.slurm`), keeps a durable job state on disk (:mod:`.state`),
decides each attempt's outcome from its ``status.json`` and exit status (:mod:`.outcome`),
retries failures with back-off (:mod:`.runner`, command line in :mod:`.options`), shows progress
(:mod:`.progress`) and writes a static review page, ``index.html`` plus ``summary.json``
(:mod:`.gallery`). See ``docs/batch.md``.
"""
from threestudio_like.batch.jobs import BatchSpec, Job, JobFileError, load_job_file

__all__ = ["BatchSpec", "Job", "JobFileError", "load_job_file"]
