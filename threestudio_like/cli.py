"""Command line: ``python launch.py --config X.yaml (--train|--validate|--test|--export) [k=v ...]``."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from typing import List, Optional, Sequence

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
  python launch.py --bench janus --suite benchmarks/janus_suite.json --configs dreamfusion-sd21.yaml,mvdream-sd21.yaml --seeds 0,1,2
                                                  (Janus benchmark report; docs/janus.md)
  python launch.py --bench lab --seeds 0,1,2      (Janus on the reference-object lab: CPU, known answer)
"""

# --bench NAME: (module, function, what it runs); the function takes the remaining argv.
BENCHES = {
    "janus": ("threestudio_like.janus.report", "main",
              "train/measure a suite of prompts x configs x seeds, write the report"),
    "lab": ("threestudio_like.janus.lab", "lab_main", "Janus per prior mode on the reference-object lab (CPU)"),
    "janus-lab": ("threestudio_like.janus.lab", "lab_main", "same as lab"),
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --- batch hook: `launch.py --batch jobs.yaml` runs a job queue (threestudio_like/batch) ---
    if any(a == "--batch" or a.startswith("--batch=") for a in argv):
        from threestudio_like.batch.runner import main as batch_main

        return batch_main(argv)
    # --- end batch hook ---
    # --- bench hook: `launch.py --bench NAME ...` runs a benchmark (threestudio_like/janus) ---
    if any(a == "--bench" or a.startswith("--bench=") for a in argv):
        return bench_main(argv)
    # --- end bench hook ---
    if "--convert" in argv:
        return convert_main(argv)
    args, extras = build_parser().parse_known_args(argv)
    unknown_flags = [e for e in extras if e.startswith("--")]
    if unknown_flags:
        print(f"error: unknown option(s) {unknown_flags}; config overrides are key=value.", file=sys.stderr)
        return 2
    if "CUDA_VISIBLE_DEVICES" not in os.environ and args.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    _quiet_libraries(args.verbose)

    from threestudio_like.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, extras)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.sample:
        return sample_main(cfg, args)
    if not args.train and not cfg.resume:
        print("error: --validate/--test/--export need a trained model: pass resume=<trial>/ckpts/last.ckpt",
              file=sys.stderr)
        return 2
    return run(cfg, args, argv)


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
    parser = argparse.ArgumentParser(prog="launch.py --convert", description=convert_main.__doc__)
    parser.add_argument("--convert", nargs=3, metavar=("KIND", "SRC", "DST"), required=True,
                        help="KIND: mvdream | zero123; SRC: checkpoint file or Hugging Face id; DST: output folder")
    parser.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder or id to copy into DST")
    args = parser.parse_args(argv)
    kind, src, dst = args.convert
    from threestudio_like.guidance.weights import MissingWeightsError, UnsafeCheckpointError, find_converter

    try:
        converter = find_converter(kind)
        print(f"Converting {src} ({kind}) -> {dst}")
        out = converter(src, dst, tokenizer=args.tokenizer)
    except (KeyError, MissingWeightsError, UnsafeCheckpointError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    print(f"Done: pass pretrained_model_name_or_path={out}")
    return 0


def sample_main(cfg, args) -> int:
    """``--sample``: the recipe's prior generates images of the prompt (seed=...)."""
    from threestudio_like.config import ConfigError
    from threestudio_like.guidance.sampling import run_sample
    from threestudio_like.guidance.ldm_convert import ConversionError
    from threestudio_like.guidance.weights import MissingWeightsError, UnsafeCheckpointError

    try:
        path = run_sample(cfg, seed=cfg.seed)
    except (ConfigError, MissingWeightsError, UnsafeCheckpointError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Samples written: {path}")
    return 0


def run(cfg, args, argv: Sequence[str]) -> int:
    """Build data and system from a validated config and run the requested mode."""
    import pytorch_lightning as pl
    import torch

    from threestudio_like import find
    from threestudio_like.config import ConfigError, dump_parsed
    from threestudio_like.geometry.isosurface import IsosurfaceError
    from threestudio_like.systems.base import NonFiniteLossError
    from threestudio_like.systems.callbacks import AtomicCheckpoint, DiskFullError, StepProgress
    from threestudio_like.guidance.ldm_convert import ConversionError
    from threestudio_like.guidance.weights import MissingWeightsError, UnsafeCheckpointError

    weight_errors = (MissingWeightsError, UnsafeCheckpointError, ConversionError)
    trial = cfg.trial_dir
    os.makedirs(trial, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    try:
        dm = find(cfg.data_type)(cfg.data)
        system = find(cfg.system_type)(cfg.system)
    except (ConfigError, *weight_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    system.set_save_dir(os.path.join(trial, "save"))

    use_gpu = torch.cuda.is_available()
    trainer_args = dict(cfg.trainer)
    if not use_gpu and "16" in str(trainer_args.get("precision", "32")):
        trainer_args["precision"] = "32-true"  # half precision is slow or unsupported on CPU
    if "val_check_interval" in trainer_args:
        trainer_args.setdefault("check_val_every_n_epoch", None)
    ckpt_cb = AtomicCheckpoint(os.path.join(trial, "ckpts"), **dict(cfg.checkpoint))
    callbacks = [ckpt_cb, StepProgress()] if args.train else [StepProgress()]
    loggers = []
    if args.train:
        dump_parsed(cfg, os.path.join(trial, "configs", "parsed.yaml"))
        with open(os.path.join(trial, "cmd.txt"), "a") as f:
            f.write("python launch.py " + " ".join(shlex.quote(a) for a in argv) + "\n")
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(trial, name="logs", version="csv"))
        try:
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(trial, name="logs", version="tb"))
        except (ImportError, ModuleNotFoundError):
            pass
    trainer = pl.Trainer(
        accelerator="gpu" if use_gpu else "cpu",
        devices=-1 if use_gpu else 1,
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        inference_mode=False,
        num_sanity_val_steps=0,
        **trainer_args,
    )
    print(f"Trial directory: {trial}")
    try:
        if args.train:
            trainer.fit(system, dm, ckpt_path=cfg.resume)
            trainer.test(system, dm, verbose=False)
            trainer.predict(system, dm, return_predictions=False)
        elif args.validate:
            trainer.validate(system, dm, ckpt_path=cfg.resume, verbose=False)
        elif args.test:
            trainer.test(system, dm, ckpt_path=cfg.resume, verbose=False)
        elif args.export:
            trainer.predict(system, dm, ckpt_path=cfg.resume, return_predictions=False)
    except NonFiniteLossError as exc:
        kept = ckpt_cb.last_path if os.path.exists(ckpt_cb.last_path) else "none saved yet"
        print(f"error: non-finite loss: {exc}\nLast good checkpoint: {kept}", file=sys.stderr)
        return 1
    except DiskFullError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except (ConfigError, *weight_errors) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except IsosurfaceError as exc:
        saved = f" The checkpoint {ckpt_cb.last_path} is saved;" if os.path.exists(ckpt_cb.last_path) else ""
        print(f"error: mesh export failed: {exc}{saved} re-run with --export and the suggested "
              f"threshold.", file=sys.stderr)
        return 1
    print(f"Done. Outputs in {trial}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
