"""Command line: ``python launch.py --config X.yaml (--train|--validate|--test|--export|--sample) [k=v ...]``.

Every run keeps ``<trial>/status.json`` (:mod:`.run_status`) up to date; errors of the product
(:mod:`.errors`) end as one ``error: ...`` message and their exit status, mapped in
:func:`report_failure`. ``--batch``, ``--bench`` and ``--convert`` hand over to their own parsers.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import warnings
from typing import Any, Optional, Sequence

from threestudio_like.errors import ConfigError, ThreestudioLikeError, category_of, exit_code_of
from threestudio_like.preview.page import write_run_preview
from threestudio_like.run_status import ENV_STATUS_FILE, STATUS_FILE, RunStatus, describe
from threestudio_like.utils.progress import use_status

USAGE_EXAMPLES = """examples:
  python launch.py --config demo.yaml --train
  python launch.py --config mvdream-sd21.yaml --train prompt="a DSLR photo of a corgi"
  python launch.py --config outputs/<name>/<trial>/configs/parsed.yaml --train resume=outputs/<name>/<trial>/ckpts/last.ckpt
  python launch.py --config demo.yaml --export resume=outputs/<name>/<trial>/ckpts/last.ckpt
  python launch.py --batch jobs.yaml [--gpus 0,1]   (a queue of jobs; see --batch --help, docs/batch.md)
  python launch.py --config mvdream-sd21.yaml --sample prompt="a corgi"   (4 views from the prior: a weights check)
  python launch.py --convert mvdream sd-v2.1-base-4view.pt weights/mvdream-sd21   (original checkpoint -> diffusers folder)
  python launch.py --config zero123-sjc.yaml --train image=object_rgba.png   (image-to-3D; --sample: novel views)
  python launch.py --convert zero123 105000.ckpt weights/zero123-105000
  python launch.py --config ldm3d.yaml --sample prompt="a cosy living room"   (RGB + 16-bit depth + preview)
  python launch.py --config ldm3d-pano.yaml --sample prompt="360 view of a bedroom"   (DepthFusion: GLB + 360 video)
  python launch.py --config hawki-aerial.yaml --sample image=photo.png prompt="a photo of a church" [elevation=60 azimuth=0]
                                                  (HawkI aerial view of a photo; docs/hawki.md)
  python launch.py --bench janus --suite benchmarks/janus_suite.json --configs dreamfusion-sd21.yaml,mvdream-sd21.yaml --seeds 0,1,2
                                                  (Janus benchmark report; docs/janus.md)
  python launch.py --bench lab --seeds 0,1,2      (Janus on the reference-object lab: CPU, known answer)
  python launch.py --recipes                      (the recipes this install ships)
  python launch.py --show-config demo.yaml [key=value ...]   (a recipe's full, resolved config)
  python launch.py --serve outputs/<name>/<trial>/save [--port 8000]
                                                  (serve a run's or a batch's folder on 127.0.0.1 and open
                                                   the printed preview.html: the assets in 3D, turntables)
  python launch.py --preview-assets               (install the pinned 3D viewer and glTF validator from npm)
  python launch.py --validate-gltf model.glb      (Khronos glTF validator report; exit 1 on errors)
"""

# --bench NAME: (module, function, what it runs); the function takes the remaining argv.
BENCHES = {
    "janus": ("threestudio_like.janus.report", "main",
              "train/measure a suite of prompts x configs x seeds, write the report"),
    "lab": ("threestudio_like.janus.lab", "lab_main", "Janus per prior mode on the reference-object lab (CPU)"),
    "janus-lab": ("threestudio_like.janus.lab", "lab_main", "same as lab"),
}
MODES = ("train", "validate", "test", "export", "sample")
# Tools with their own arguments: flag -> (module, function taking the whole argv).
TOOLS = {
    "--serve": ("threestudio_like.preview.serve", "serve_main"),
    "--preview-assets": ("threestudio_like.preview.assets", "assets_main"),
    "--validate-gltf": ("threestudio_like.preview.validate", "validate_main"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Distil a diffusion prior into a NeRF; export meshes and turntable videos.",
        epilog=USAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="recipe: a path or a file name in configs/")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train, then write the turntable and mesh")
    mode.add_argument("--validate", action="store_true", help="render validation views from resume=<ckpt>")
    mode.add_argument("--test", action="store_true", help="render the turntable video from resume=<ckpt>")
    mode.add_argument("--export", action="store_true", help="export the mesh from resume=<ckpt>")
    mode.add_argument("--sample", action="store_true",
                      help="novel views / images straight from the prior (prompt= or image=), no 3D")
    parser.add_argument("--gpu", default="0", help="GPU ids, e.g. 0 or 0,1 (ignored without CUDA)")
    parser.add_argument("--verbose", action="store_true", help="show library warnings and debug logs")
    return parser


def _quiet_libraries(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.DEBUG)
        return
    import pytorch_lightning  # noqa: F401  (it sets its loggers' levels on import)

    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def report_failure(exc: BaseException, status: Optional[RunStatus] = None, checkpoint: Optional[str] = None) -> int:
    """The one place where a failure becomes ``error: ...``, a status entry and an exit status.

    Errors of the product print their message (plus what is kept, for run failures); anything
    else is recorded and re-raised by the caller so that its traceback stays visible.
    """
    message = describe(exc)
    category = category_of(exc)
    kept = checkpoint if checkpoint and os.path.exists(checkpoint) else None
    if category == "nonfinite":
        message = f"non-finite loss: {exc}\nLast good checkpoint: {kept or 'none saved yet'}"
    elif category == "disk-full":
        if isinstance(exc, ThreestudioLikeError):
            message = str(getattr(exc, "strerror", None) or exc)
        else:  # a full disk while writing a video, a mesh, a log ...
            where = f" while writing {exc.filename}" if getattr(exc, "filename", None) else ""
            intact = (f"the checkpoint {kept} is intact; free some space, then run the same command again "
                      f"(resume={kept} to continue)") if kept else "no checkpoint had been saved yet"
            message = f"no space left on the device{where}: {intact}."
    elif category == "export":
        saved = f" The checkpoint {kept} is saved;" if kept else ""
        message = f"mesh export failed: {exc}{saved} re-run with --export and the suggested threshold."
    code = status.fail(exc, message) if status is not None else exit_code_of(exc)
    if isinstance(exc, ThreestudioLikeError) or category == "disk-full":
        print(f"error: {message}", file=sys.stderr)
    return code


def _early_status(mode: str) -> Optional[RunStatus]:
    """A status for failures before the trial folder is known, where a supervisor asked for one."""
    path = os.environ.get(ENV_STATUS_FILE)
    return RunStatus(path, mode) if path else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--batch" or a.startswith("--batch=") for a in argv):
        if "-h" in argv or "--help" in argv:  # "--batch --help": the queue's own options
            from threestudio_like.batch.options import build_parser as batch_parser

            batch_parser().print_help()
            return 0
        from threestudio_like.batch.runner import main as batch_main

        return batch_main(argv)
    if any(a == "--bench" or a.startswith("--bench=") for a in argv):
        return bench_main(argv)
    if "--convert" in argv:
        return convert_main(argv)
    tool = next((TOOLS[a.split("=", 1)[0]] for a in argv if a.split("=", 1)[0] in TOOLS), None)
    if tool is not None:
        import importlib

        return int(getattr(importlib.import_module(tool[0]), tool[1])(argv))
    if any(a in ("--recipes", "--show-config") or a.startswith("--show-config=") for a in argv):
        from threestudio_like.config import load_config
        from threestudio_like.recipes import recipes_main

        return recipes_main(argv, load_config)
    args, extras = build_parser().parse_known_args(argv)
    mode = next(m for m in MODES if getattr(args, m))
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        problem = ConfigError(f"unknown option(s) {unknown_flags}; config overrides are key=value.")
        return report_failure(problem, _early_status(mode))
    if "CUDA_VISIBLE_DEVICES" not in os.environ and args.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    _quiet_libraries(args.verbose)

    from threestudio_like.config import load_config

    try:
        cfg = load_config(args.config, extras)
        from threestudio_like.trainer_args import check_one_device

        # trainer.* was checked as the config loaded; the GPU ids come from --gpu or the environment
        for gpu_ids in (args.gpu, os.environ.get("CUDA_VISIBLE_DEVICES", "")):
            check_one_device({}, gpu_ids)
        if mode not in ("train", "sample") and not cfg.resume:
            raise ConfigError("--validate/--test/--export need a trained model: pass resume=<trial>/ckpts/last.ckpt")
        if cfg.resume and mode != "sample":
            check_resume(cfg)
    except ThreestudioLikeError as exc:
        return report_failure(exc, _early_status(mode))
    return run(cfg, mode, argv)


def check_resume(cfg: Any) -> None:
    """A ``resume=`` checkpoint must be readable and fit the configured system, checked before
    anything (the trial's ``status.json`` included) is written."""
    from threestudio_like import find
    from threestudio_like.models.checkpoints import check_checkpoint_fits

    check_checkpoint_fits(cfg.resume, find(cfg.system_type)(cfg.system))


def bench_main(argv: Sequence[str]) -> int:
    """``--bench NAME [args ...]``: run a benchmark; the other arguments go to it unchanged."""
    import importlib

    rest, name, i = [], None, 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a == "--bench" and name is None:
            name = argv[i + 1] if i + 1 < len(argv) else ""
            i += 2
            continue
        if a.startswith("--bench=") and name is None:
            name = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    available = "\n".join(f"  {k:10s} {v[2]}" for k, v in BENCHES.items())
    if name not in BENCHES:
        what = f"unknown benchmark '{name}'" if name else "--bench needs a benchmark name"
        print(f"error: {what}; available:\n{available}", file=sys.stderr)
        return 2
    module, func, _ = BENCHES[name]
    return int(getattr(importlib.import_module(module), func)(rest, prog=f"launch.py --bench {name}") or 0)


def convert_main(argv: Sequence[str]) -> int:
    """``--convert KIND SRC DST``: an original checkpoint -> a diffusers folder (safetensors)."""
    from threestudio_like.models.loader import convert_checkpoint, converter_kinds

    parser = argparse.ArgumentParser(prog="launch.py --convert", description=convert_main.__doc__)
    parser.add_argument("--convert", nargs=3, metavar=("KIND", "SRC", "DST"), required=True,
                        help=f"KIND: {' | '.join(converter_kinds())}; SRC: checkpoint file or Hugging Face id; "
                             f"DST: output folder")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder or id to copy into DST")
    args = parser.parse_args(argv)
    kind, src, dst = args.convert
    try:
        print(f"Converting {src} ({kind}) -> {dst}")
        out = convert_checkpoint(kind, src, dst, tokenizer=args.tokenizer)
    except ThreestudioLikeError as exc:
        return report_failure(exc)
    print(f"Done: pass pretrained_model_name_or_path={out}")
    return 0


def run(cfg: Any, mode: str, argv: Sequence[str]) -> int:
    """Run ``mode`` for a validated config, keeping ``status.json``; the exit status."""
    trial = cfg.trial_dir
    fresh_trial = not os.path.exists(trial)
    status = RunStatus(os.environ.get(ENV_STATUS_FILE) or os.path.join(trial, STATUS_FILE), mode)
    status.write()
    checkpoint = os.path.join(trial, "ckpts", "last.ckpt")
    try:
        with use_status(status):
            if mode == "sample":
                from threestudio_like.sampling.run import run_sample

                path = run_sample(cfg, status=status)
                print(f"Samples written: {path}")
            else:
                _run_lightning(cfg, mode, argv, status)
                write_run_preview(trial, status)
                print(f"Done. Outputs in {trial}")
        status.finish()
        return 0
    except BaseException as exc:
        code = report_failure(exc, status, checkpoint)
        if status.data["phase"] == "setup" and fresh_trial and not os.environ.get(ENV_STATUS_FILE):
            shutil.rmtree(trial, ignore_errors=True)  # nothing was made: leave no empty trial behind
        if category_of(exc) == "interrupted":  # never a success: 130 (Ctrl-C) or 143 (SIGTERM)
            kept = f"; continue with resume={checkpoint}" if os.path.exists(checkpoint) else ""
            print(f"interrupted: the run did not finish (exit {code}){kept}", file=sys.stderr)
            raise SystemExit(code) from None
        if not isinstance(exc, ThreestudioLikeError) and category_of(exc) != "disk-full":
            raise
        return code


def _run_lightning(cfg: Any, mode: str, argv: Sequence[str], status: RunStatus) -> None:
    """Build data and system, then fit / validate / test / predict with Lightning."""
    import pytorch_lightning as pl
    import torch

    from threestudio_like import find
    from threestudio_like.config import dump_parsed
    from threestudio_like.models.checkpoints import lightning_safe_globals
    from threestudio_like.systems.callbacks import (AtomicCheckpoint, RunStatusCallback, StepProgress, StepSeeds,
                                                   TrialRecord)
    from threestudio_like.training import active_backends, run_loggers, trainer_arguments

    trial = cfg.trial_dir
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system)
    system.set_save_dir(os.path.join(trial, "save"))
    system.status = status
    train = mode == "train"
    if train:
        system.prepare_prior()  # weights and prompt embeddings load now: a problem leaves no trial behind

    use_gpu = torch.cuda.is_available()
    ckpt_cb = AtomicCheckpoint(os.path.join(trial, "ckpts"), **dict(cfg.checkpoint))
    record = TrialRecord(lambda: dump_parsed(cfg, os.path.join(trial, "configs", "parsed.yaml")),
                         os.path.join(trial, "cmd.txt"), "python launch.py " + " ".join(shlex.quote(a) for a in argv))
    callbacks = [StepSeeds(cfg.seed), ckpt_cb, record] if train else []
    callbacks += [StepProgress(), RunStatusCallback(status)]
    loggers = run_loggers(trial) if train else []
    trainer = pl.Trainer(**trainer_arguments(dict(cfg.trainer), use_gpu, callbacks, loggers))
    backends = active_backends(system, trainer.strategy.root_device, trainer.precision)
    status.set(backends=backends)
    print("Backends: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in backends.items()))
    print(f"Trial directory: {trial}")
    resume = {"ckpt_path": cfg.resume, "weights_only": True}
    with lightning_safe_globals():
        if train:
            try:
                trainer.fit(system, dm, **resume)
            finally:
                if os.path.exists(ckpt_cb.last_path):
                    status.add_output("checkpoint", ckpt_cb.last_path)
            trainer.test(system, dm, verbose=False)
            trainer.predict(system, dm, return_predictions=False)
        elif mode == "validate":
            trainer.validate(system, dm, verbose=False, **resume)
        elif mode == "test":
            trainer.test(system, dm, verbose=False, **resume)
        elif mode == "export":
            trainer.predict(system, dm, return_predictions=False, **resume)


if __name__ == "__main__":
    sys.exit(main())
