"""Bad input, tried as a careful tester would: every case ends with a non-zero exit status and
one clear ``error: ...`` message naming the problem, never a traceback, never a silent
acceptance, and never a change to what an earlier run saved.

The table runs against one trial made by a real tiny training run (made once, shared by the
xdist workers); every file of it is compared byte for byte after each case. Almost every case
fails while the config is loaded, before any work.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Union

import pytest
import torch

from conftest import TINY_OVERRIDES
from threestudio_like.cli import main

TRAIN = ["--config", "demo.yaml", "--train"]
# The bad override comes after the tiny ones (the last value wins): a case the product accepted
# by mistake trains for seconds, not minutes, and fails its test.


def _input_image() -> str:
    """A valid 64x64 RGBA input (a noisy disc on transparency, a few kB), written once per machine."""
    import numpy as np
    from PIL import Image

    path = os.path.join(tempfile.gettempdir(), "threestudio_like_tests", "disc_rgba.png")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:64, :64]
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, (64, 64, 3))
        rgba[..., 3] = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2, 255, 0)
        tmp = f"{path}.{os.getpid()}.tmp"
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")
        os.replace(tmp, path)
    return path


IMAGE = _input_image()


# ------------------------------------------------------------------------------------------
# the trial that must never change


@pytest.fixture(scope="session")
def trial(tmp_path_factory) -> Path:
    """A trial of a real tiny training run, made once for all workers."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "bad-input-trial"
    with FileLock(str(root) + ".lock"):
        done = root / "demo" / "reference-object" / "ckpts" / "last.ckpt"
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)
            code = main([*TRAIN, f"exp_root_dir={root}", "use_timestamp=false", *TINY_OVERRIDES])
            assert code == 0 and done.is_file()
    return done.parent.parent


def _digests(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# files the cases write


class Ctx:
    """What a case may use: a scratch folder and the saved trial."""

    def __init__(self, tmp: Path, trial: Path) -> None:
        self.tmp, self.trial = tmp, trial
        self.ckpt = str(trial / "ckpts" / "last.ckpt")
        self.parsed = str(trial / "configs" / "parsed.yaml")

    def file(self, name: str, data: Union[str, bytes]) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    def torch_file(self, name: str, obj) -> str:
        path = self.tmp / name
        torch.save(obj, path)
        return str(path)

    def recipe(self, text: str) -> List[str]:
        """A config file of ``text`` (the demo recipe's keys below it stay valid)."""
        return ["--config", self.file("recipe.yaml", text), "--train"]

    def out(self) -> str:
        return f"exp_root_dir={self.tmp / 'outputs'}"


def truncated(ctx: Ctx) -> bytes:
    data = Path(ctx.ckpt).read_bytes()
    return data[: len(data) // 2]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def job_file(ctx: Ctx, text: str) -> List[str]:
    return ["--batch", ctx.file("jobs.yaml", text), "--out", str(ctx.tmp / "batch"), "--check"]


def resume(mode: str, path: str, *more: str) -> List[str]:
    return ["--config", "demo.yaml", f"--{mode}", f"resume={path}", *TINY_OVERRIDES, *more]


Case = Union[List[str], Callable[[Ctx], List[str]]]

OVERRIDES = [  # (id, demo.yaml override, fragment of the message)
    ("max-steps-abc", "trainer.max_steps=abc", "trainer.max_steps"),
    ("max-steps-negative", "trainer.max_steps=-5", "trainer.max_steps"),
    ("max-steps-zero", "trainer.max_steps=0", "trainer.max_steps"),
    ("max-steps-float", "trainer.max_steps=1e9", "trainer.max_steps"),
    ("max-epochs-negative", "trainer.max_epochs=-5", "trainer.max_epochs"),
    ("precision-8", "trainer.precision=8", "trainer.precision"),
    ("precision-word", "trainer.precision=half", "trainer.precision"),
    ("val-check-zero", "trainer.val_check_interval=0", "trainer.val_check_interval"),
    ("val-check-negative", "trainer.val_check_interval=-1", "trainer.val_check_interval"),
    ("val-check-word", "trainer.val_check_interval=often", "trainer.val_check_interval"),
    ("log-every-zero", "trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("grad-clip-word", "trainer.gradient_clip_val=abc", "trainer.gradient_clip_val"),
    ("accelerator-tpu", "trainer.accelerator=tpu", "trainer.accelerator"),
    ("devices-word", "trainer.devices=abc", "trainer.devices"),
    ("devices-two", "trainer.devices=2", "--batch"),
    ("num-nodes-word", "trainer.num_nodes=abc", "trainer.num_nodes"),
    ("num-nodes-two", "trainer.num_nodes=2", "--batch"),
    ("devices-list", "trainer.devices=[0,1]", "--batch"),
    ("progress-bar-word", "trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar"),
    ("val-every-epoch-zero", "trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch"),
    ("accumulate-zero", "trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("trainer-typo", "trainer.max_step=5", "Did you mean 'trainer.max_steps'"),
    ("limit-batches-negative", "trainer.limit_val_batches=-1", "trainer.limit_val_batches"),
    ("batch-size-word", "data.batch_size=two", "data.batch_size"),
    ("batch-size-zero", "data.batch_size=0", "data.batch_size"),
    ("batch-size-negative", "data.batch_size=-1", "data.batch_size"),
    ("batch-size-fraction", "data.batch_size=1.5", "data.batch_size"),
    ("height-zero", "data.height=0", "data.height"),
    ("width-negative", "data.width=-16", "data.width"),
    ("height-list-zero", "data.height=[0,16]", "data.height"),
    ("height-width-lengths", "data.width=[16,32,64]", "data.width"),
    ("milestones-count", "data.resolution_milestones=[1,2]", "data.resolution_milestones"),
    ("milestones-negative", "data.resolution_milestones=[-5]", "data.resolution_milestones"),
    ("n-view-zero", "data.n_view=0", "data.n_view"),
    ("batch-not-multiple", "data.n_view=4", "data.batch_size"),
    ("eval-width-zero", "data.eval_width=0", "data.eval_width"),
    ("eval-height-negative", "data.eval_height=-1", "data.eval_height"),
    ("eval-batch-zero", "data.eval_batch_size=0", "data.eval_batch_size"),
    ("n-test-views-zero", "data.n_test_views=0", "data.n_test_views"),
    ("n-val-views-zero", "data.n_val_views=0", "data.n_val_views"),
    ("distance-zero", "data.camera_distance_range=[0,0]", "data.camera_distance_range"),
    ("distance-reversed", "data.camera_distance_range=[2,1]", "data.camera_distance_range"),
    ("distance-one-value", "data.camera_distance_range=[1]", "data.camera_distance_range"),
    ("fovy-zero", "data.fovy_range=[0,0]", "data.fovy_range"),
    ("fovy-over-180", "data.fovy_range=[10,200]", "data.fovy_range"),
    ("elevation-reversed", "data.elevation_range=[90,-90]", "data.elevation_range"),
    ("elevation-beyond-pole", "data.elevation_range=[-100,100]", "data.elevation_range"),
    ("azimuth-reversed", "data.azimuth_range=[180,-180]", "data.azimuth_range"),
    ("eval-fovy-zero", "data.eval_fovy_deg=0", "data.eval_fovy_deg"),
    ("eval-distance-zero", "data.eval_camera_distance=0", "data.eval_camera_distance"),
    ("data-typo", "data.batchsize=2", "Did you mean 'data.batch_size'"),
    ("lr-word", "system.optimizer.args.lr=fast", "system.optimizer.args.lr"),
    ("lr-negative", "system.optimizer.args.lr=-0.01", "system.optimizer.args.lr"),
    ("lr-zero", "system.optimizer.args.lr=0", "system.optimizer.args.lr"),
    ("betas-one", "system.optimizer.args.betas=[0.9]", "system.optimizer.args.betas"),
    ("optimizer-typo", "system.optimizer.name=Adamm", "Did you mean 'Adam'"),
    ("samples-per-ray-zero", "system.renderer.num_samples_per_ray=0", "system.renderer.num_samples_per_ray"),
    ("eval-chunk-zero", "system.renderer.eval_chunk_size=0", "system.renderer.eval_chunk_size"),
    ("renderer-radius-zero", "system.renderer.radius=0", "system.renderer.radius"),
    ("renderer-backend", "system.renderer.backend=cuda", "system.renderer.backend"),
    ("isosurface-resolution-zero", "system.geometry.isosurface_resolution=0", "system.geometry.isosurface_resolution"),
    ("isosurface-threshold-word", "system.geometry.isosurface_threshold=banana", "system.geometry.isosurface_threshold"),
    ("geometry-radius-negative", "system.geometry.radius=-1", "system.geometry.radius"),
    ("density-activation", "system.geometry.density_activation=softplu", "Did you mean 'softplus'"),
    ("n-neurons-zero", "system.geometry.mlp_network_config.n_neurons=0", "n_neurons"),
    ("n-levels-zero", "system.geometry.pos_encoding_config.n_levels=0", "n_levels"),
    ("test-fps-zero", "system.test_fps=0", "system.test_fps"),
    ("test-format", "system.test_formats=[avi]", "system.test_formats"),
    ("background-color-short", "system.background.color=[1,1]", "length 2"),
    ("loss-weight-word", "system.loss.lambda_sds=abc", "system.loss.lambda_sds"),
    ("loss-name", "system.loss.sds=1", "system.loss.sds"),
    ("guidance-mode", "system.guidance.mode=banana", "system.guidance.mode"),
    ("guidance-resolution-zero", "system.guidance.resolution=0", "system.guidance.resolution"),
    ("max-step-percent-2", "system.guidance.max_step_percent=2", "system.guidance.max_step_percent"),
    ("min-over-max-step", "system.guidance.min_step_percent=0.99", "system.guidance.min_step_percent"),
    ("exporter-format", "system.exporter.formats=[stl]", "system.exporter.formats"),
    ("exporter-resolution-zero", "system.exporter.isosurface_resolution=0", "system.exporter.isosurface_resolution"),
    ("every-n-negative", "checkpoint.every_n_train_steps=-10", "checkpoint.every_n_train_steps"),
    ("every-n-zero", "checkpoint.every_n_train_steps=0", "checkpoint.every_n_train_steps"),
    ("seed-word", "seed=abc", "seed"),
    ("name-empty", "name=", "name"),
    ("self-interpolation", "tag=${tag}", "Recursive interpolation"),
    ("dangling-interpolation", "tag=${nope}", "nope"),
    ("dangling-nested", "tag=${system.nope}", "system.nope"),
    ("unknown-part", "system.geometry_type=nope", "system.geometry_type"),
    ("unknown-data", "data_type=nope", "data_type"),
    ("unknown-top-key", "trainr.max_steps=5", "Did you mean 'trainer'"),
    ("prompt-without-prompt-processor", "prompt=a corgi", "does not take a prompt"),
    ("not-key-value", "max_steps", "key=value"),
]

FILES = [  # (id, case, fragment)
    ("config-missing", ["--config", "no-such-recipe.yaml", "--train"], "not found"),
    ("config-typo", ["--config", "dmeo.yaml", "--train"], "Did you mean 'demo.yaml'"),
    ("config-malformed", lambda c: c.recipe("data: [1, 2\nsystem: {"), "not valid YAML"),
    ("config-tabs", lambda c: c.recipe("data:\n\tbatch_size: 1\n"), "not valid YAML"),
    ("config-empty", lambda c: c.recipe(""), "is empty"),
    ("config-comments-only", lambda c: c.recipe("# nothing\n"), "is empty"),
    ("config-list", lambda c: c.recipe("- data\n- system\n"), "YAML list"),
    ("config-scalar", lambda c: c.recipe("just words\n"), "Unknown config key 'just words'"),
    ("config-binary", lambda c: ["--config", c.file("r.yaml", os.urandom(256) + b"\0"), "--train"], "r.yaml"),
    ("config-self-reference", lambda c: c.recipe("data_type: random-camera-datamodule\nname: ${name}\n"),
     "Recursive interpolation"),
    ("config-dangling", lambda c: c.recipe("data_type: random-camera-datamodule\ntag: ${data.nothing}\n"),
     "data.nothing"),
    ("config-unknown-key", lambda c: c.recipe("data_type: random-camera-datamodule\ntrainer_: {}\n"),
     "Did you mean 'trainer'"),
    ("plugin-missing", lambda c: c.recipe("plugins: [nothing.py]\n"), "nothing.py"),
    ("plugin-broken", lambda c: c.recipe("plugins: [p.py]\n") if c.file("p.py", "raise RuntimeError('oops')\n") else [],
     "oops"),
]

FLAGS = [
    ("flag-unknown", [*TRAIN, "--gpus", "0"], "unknown option"),
    ("flag-misspelt-mode", ["--config", "demo.yaml", "--trian"], "required"),
    ("flag-no-mode", ["--config", "demo.yaml"], "--train"),
    ("flag-two-modes", ["--config", "demo.yaml", "--train", "--export"], "not allowed"),
    ("flag-no-config", ["--train"], "--config"),
    ("flag-two-gpus", [*TRAIN, "--gpu", "0,1"], "--batch"),
    ("export-without-resume", ["--config", "demo.yaml", "--export"], "resume="),
    ("bench-unknown", ["--bench", "nope"], "unknown benchmark"),
    ("batch-unknown-flag", lambda c: [*job_file(c, "jobs: [a corgi]\n"), "--config", "demo.yaml", "--gpu", "0"],
     "--gpu"),
    ("batch-bad-workers", lambda c: [*job_file(c, "jobs: [a corgi]\n"), "--workers", "many"], "--workers"),
]

PROMPTS_AND_IMAGES = [
    ("prompt-empty", ["--config", "dreamfusion-sd21.yaml", "--train", "prompt="], "'prompt=' is empty"),
    ("prompt-blank", ["--config", "dreamfusion-sd21.yaml", "--train", "prompt=   "], "'prompt=' is empty"),
    ("prompt-empty-key", ["--config", "dreamfusion-sd21.yaml", "--train", "system.prompt_processor.prompt=' '"],
     "prompt is empty"),
    ("prompt-missing", ["--config", "dreamfusion-sd21.yaml", "--train"], "prompt="),
    ("image-missing-arg", ["--config", "zero123-sjc.yaml", "--train"], "image="),
    ("image-empty", ["--config", "zero123-sjc.yaml", "--train", "image="], "'image=' is empty"),
    ("image-and-references-unset", ["--config", "eschernet-6dof.yaml", "--train"], "No image given"),
    ("image-no-file", ["--config", "zero123-sjc.yaml", "--train", "image=/nonexistent/x.png"], "not found"),
    ("image-folder", lambda c: ["--config", "zero123-sjc.yaml", "--train", f"image={c.tmp}"], "is a folder"),
    ("image-text-file", lambda c: ["--config", "zero123-sjc.yaml", "--train", f"image={c.file('notes.png', 'hello')}"],
     "notes.png"),
    ("image-zero-bytes", lambda c: ["--config", "zero123-sjc.yaml", "--train", f"image={c.file('empty.png', b'')}"],
     "empty.png"),
    ("image-truncated", lambda c: ["--config", "zero123-sjc.yaml", "--train",
                                   f"image={c.file('half.png', Path(IMAGE).read_bytes()[:300])}"], "half.png"),
    ("mask-no-file", ["--config", "zero123-sjc.yaml", "--train", f"image={IMAGE}", "data.mask_path=/no/mask.png"],
     "data.mask_path"),
    ("image-fraction-zero", ["--config", "zero123-sjc.yaml", "--train", f"image={IMAGE}", "data.object_fraction=0"],
     "data.object_fraction"),
    ("image-random-camera-zero", ["--config", "zero123-sjc.yaml", "--train", f"image={IMAGE}",
                                  "data.random_camera.batch_size=0"], "data.random_camera.batch_size"),
    ("references-no-file", ["--config", "eschernet-6dof.yaml", "--train", "references=/no/views.yaml"], "views.yaml"),
    ("references-malformed", lambda c: ["--config", "eschernet-6dof.yaml", "--train",
                                        f"references={c.file('views.yaml', '- {image: a.png, azimuth: [')}"],
     "views.yaml"),
    ("references-unknown-key", lambda c: ["--config", "eschernet-6dof.yaml", "--train",
                                          f"references={c.file('views.yaml', f'- {{image: {IMAGE}, azimut: 0}}')}"],
     "Did you mean 'azimuth'"),
    ("references-image-missing", lambda c: ["--config", "eschernet-6dof.yaml", "--train",
                                            f"references={c.file('views.yaml', '- {image: gone.png, azimuth: 0}')}"],
     "gone.png"),
]

CHECKPOINTS = [
    ("ckpt-missing", resume("train", "/no/such/last.ckpt"), "no such checkpoint"),
    ("ckpt-empty", lambda c: resume("train", c.file("ckpts/empty.ckpt", b"")), "empty"),
    ("ckpt-truncated", lambda c: resume("train", c.file("ckpts/half.ckpt", truncated(c))), "not a readable checkpoint"),
    ("ckpt-random", lambda c: resume("train", c.file("ckpts/r.ckpt", os.urandom(4096))), "not a readable checkpoint"),
    ("ckpt-text", lambda c: resume("test", c.file("ckpts/t.ckpt", "just some notes\n")), "not a readable checkpoint"),
    ("ckpt-folder", lambda c: resume("export", str(c.tmp)), "no such checkpoint"),
    ("ckpt-state-dict", lambda c: resume("train", c.torch_file("sd.ckpt", {"w": torch.zeros(2)})),
     "plain state dict"),
    ("ckpt-tensor", lambda c: resume("export", c.torch_file("t.ckpt", torch.zeros(3))), "not a training checkpoint"),
    ("ckpt-pickle-payload", lambda c: resume("train", c.file("evil.ckpt", pickle.dumps(Evil()))), "refused"),
    ("ckpt-zip-without-data", lambda c: resume("validate", _empty_zip(c)), "not a readable checkpoint"),
    ("ckpt-other-geometry", lambda c: resume("export", c.ckpt, "system.geometry.pos_encoding_config.n_levels=5"),
     "another config or geometry size"),
    ("ckpt-other-mlp", lambda c: resume("test", c.ckpt, "system.geometry.mlp_network_config.n_neurons=16"),
     "parsed.yaml"),
    ("ckpt-other-hash-size", lambda c: resume("train", c.ckpt, "system.geometry.pos_encoding_config.log2_hashmap_size=11"),
     "another config"),
    ("resume-then-bad-export", lambda c: resume("export", c.ckpt, "system.exporter.formats=[stl]"),
     "system.exporter.formats"),
    ("resume-then-bad-resolution", lambda c: resume("export", c.ckpt, "system.exporter.isosurface_resolution=1"),
     "system.exporter.isosurface_resolution"),
    ("resume-then-bad-steps", lambda c: resume("train", c.ckpt, "trainer.max_steps=-5"), "trainer.max_steps"),
    ("parsed-with-bad-override", lambda c: ["--config", c.parsed, "--export", f"resume={c.ckpt}",
                                            "data.n_test_views=0"], "data.n_test_views"),
]

JOBS = [
    ("job-file-missing", ["--batch", "/no/jobs.yaml", "--check"], "jobs.yaml"),
    ("job-file-malformed", lambda c: job_file(c, "jobs: [a, b\n"), "jobs.yaml"),
    ("job-file-empty", lambda c: job_file(c, ""), "jobs.yaml"),
    ("job-unknown-field", lambda c: job_file(c, "jobs:\n  - {prompt: a corgi, config: demo.yaml, seeed: 1}\n"),
     "seeed"),
    ("job-bad-override", lambda c: job_file(c, "jobs:\n  - {config: demo.yaml, name: x, "
                                               "overrides: [data.batch_size=0]}\n"), "data.batch_size"),
    ("job-bad-trainer", lambda c: job_file(c, "defaults: {config: demo.yaml}\njobs:\n  - {name: a, "
                                              "overrides: [trainer.max_steps=abc]}\n"), "trainer.max_steps"),
    ("job-bad-retries", lambda c: job_file(c, "jobs:\n  - {name: x, config: demo.yaml, retries: -1}\n"), "retries"),
    ("job-prompt-for-demo", lambda c: job_file(c, "jobs:\n  - {prompt: a corgi, config: demo.yaml}\n"),
     "does not take a prompt"),
]


def _empty_zip(ctx: Ctx) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/version", "3\n")
    return ctx.file("ckpts/zip.ckpt", buffer.getvalue())


TABLE = ([(i, [*TRAIN, *TINY_OVERRIDES, o], f) for i, o, f in OVERRIDES] + FILES + FLAGS + PROMPTS_AND_IMAGES
         + CHECKPOINTS + JOBS)


def test_the_table_is_large_and_unique():
    ids = [case[0] for case in TABLE]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("argv, fragment", [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_bad_input_is_refused_clearly(argv: Case, fragment: str, trial, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a case writes lands in the repository
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # main() sets it from --gpu
    before = _digests(trial)
    ctx = Ctx(tmp_path / "case", trial)
    (tmp_path / "case").mkdir()
    args = argv(ctx) if callable(argv) else list(argv)
    if args and args[0] != "--batch" and not any(a.startswith("exp_root_dir=") for a in args):
        args.append(ctx.out())
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own refusals: usage and a message, exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"accepted silently: {args}\n{err}"
    assert "Traceback" not in err
    assert fragment in err, err
    assert _digests(trial) == before, "a bad input changed the saved trial"
    assert not (tmp_path / "case" / "outputs").exists() or not any((tmp_path / "case" / "outputs").rglob("*.ckpt"))
