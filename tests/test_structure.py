"""The shape of the package: modules import in any order, stay small, and a new prior is one file
plus one YAML; bad guidance values and planted checkpoints stop a run before any work."""
from __future__ import annotations

import glob
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import threestudio_like
from threestudio_like.batch.jobs import compose_job_config, load_job_file
from threestudio_like.batch.local import LocalLauncher
from threestudio_like.batch.runner import Runner
from threestudio_like.cli import main
from threestudio_like.errors import JobFileError
from threestudio_like.run_status import read_status

from conftest import REPO_ROOT, TINY_OVERRIDES

PACKAGE_DIR = Path(threestudio_like.__file__).parent


def _modules():
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="threestudio_like."))


# ------------------------------------------------------------------------------ layout
def test_every_module_imports_first():
    """Each module, imported first into a package nobody has imported yet, imports cleanly: no
    import cycle hides behind the order in which modules happen to be loaded."""
    script = textwrap.dedent("""
        import importlib, sys
        failed = []
        for name in sys.argv[1:]:
            for loaded in [m for m in sys.modules if m == "threestudio_like" or m.startswith("threestudio_like.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
    """)
    modules = _modules()
    assert len(modules) > 60
    out = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]


def test_modules_stay_under_500_lines():
    long = {str(p.relative_to(PACKAGE_DIR)): n for p in PACKAGE_DIR.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= 500}
    assert not long, long


# ------------------------------------------------------------------------------ extension story
TOY_PRIOR = '''
"""A toy prior: the exact denoiser of images of one flat colour, so distillation paints the
object that colour."""
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from torch import Tensor

from threestudio_like import register
from threestudio_like.cameras import Cameras
from threestudio_like.guidance import distillation as D
from threestudio_like.guidance.base import BaseGuidance


@register("flat-colour-guidance")
class FlatColourGuidance(BaseGuidance):
    """Every view of the data set is one flat colour."""

    @dataclass
    class Config(BaseGuidance.Config):
        colour: Tuple[float, float, float] = (0.1, 0.3, 0.9)
        """The colour of every image of the data set."""

    def guide(self, rgb: Tensor, condition: Any, cameras: Cameras, rgb_as_latents: bool = False) -> Dict[str, Tensor]:
        latents = rgb.permute(0, 3, 1, 2) * 2 - 1
        x0 = (latents.new_tensor(self.cfg.colour) * 2 - 1)[None, :, None, None]

        def predict(x_t: Tensor, t: Tensor):
            eps = D.eps_from_x0(x_t, x0.expand_as(x_t), t, self.alphas_cumprod)
            return eps, eps

        return self.distil(latents, predict)
'''


def _toy_recipe(folder: Path) -> Path:
    (folder / "flat_colour.py").write_text(TOY_PRIOR)
    recipe = yaml.safe_load((Path(REPO_ROOT) / "configs" / "demo.yaml").read_text())
    recipe.update(name="flat-colour", tag="toy", plugins=["flat_colour.py"])
    recipe["system"]["guidance_type"] = "flat-colour-guidance"
    recipe["system"]["guidance"] = {"colour": [0.1, 0.3, 0.9], "max_step_percent": 0.5}
    path = folder / "flat-colour.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_new_prior_is_one_file_plus_one_yaml(tmp_path):
    """A prior written outside the package, named by its recipe's ``plugins:`` list, trains
    through the normal command line and paints the object its colour."""
    import imageio.v2 as imageio

    recipe = _toy_recipe(tmp_path)
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("system.guidance.", "trainer.max_steps"))]
    args = ["--config", str(recipe), "--train", f"exp_root_dir={tmp_path / 'out'}", *overrides, "trainer.max_steps=30"]
    assert main(args) == 0
    (trial,) = glob.glob(str(tmp_path / "out" / "flat-colour" / "*"))
    assert read_status(trial)["state"] == "finished"
    assert os.path.isfile(os.path.join(trial, "ckpts", "last.ckpt"))
    frame = imageio.imread(os.path.join(trial, "save", "it30-test", "0.png")).astype(float) / 255.0
    obj = frame[np.abs(frame - 1.0).sum(-1) > 0.1]  # pixels that are not the white background
    assert len(obj) > 10
    mean = obj.mean(0)
    assert mean[2] > mean[0] + 0.15, mean  # blue, not the untrained grey


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("override, named", [
    ("system.guidance.mode=sideways", "system.guidance.mode: 'sideways' is not one of"),
    ("system.guidance.mode=camera-conditionned", "Did you mean 'camera-conditioned'"),
    ("system.guidance.update_rule=x0", "system.guidance.update_rule: 'x0' is not one of sds, sjc"),
    ("system.guidance.guidance_scale=strong", "system.guidance.guidance_scale"),
    ("system.guidance.n_perturb=0", "system.guidance.n_perturb must be >= 1"),
    ("system.guidance.n_other_azimuth=7", "system.guidance.n_other_azimuth must divide n_azimuth=36"),
    ("system.exporter.formats=[obj,fbx]", "system.exporter.formats[1]"),
])
def test_bad_guidance_values_stop_before_any_work(tmp_path, capsys, override, named):
    assert main(["--config", "demo.yaml", "--train", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES, override]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "demo")  # no trial folder: nothing ran


def test_batch_refuses_a_bad_mode_up_front_and_records_one_found_at_run_time(tmp_path):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"defaults": {"config": "demo.yaml", "overrides": list(TINY_OVERRIDES),
                                                 "retries": 3, "retry_delay": 0},
                                    "jobs": [{"name": "sideways", "overrides": ["system.guidance.mode=sideways"]}]}))
    with pytest.raises(JobFileError, match=r"sideways.*system\.guidance\.mode"):
        load_job_file(jobs, output_dir=tmp_path / "batch")
    # the same job run without the up-front check fails in its own process: the runner reads
    # the config failure from the job's status.json and does not retry it
    spec = load_job_file(jobs, output_dir=tmp_path / "batch", validate=False)
    for job in spec.jobs:
        job.composed, job.seed = compose_job_config(job), 0
    assert Runner(spec, LocalLauncher([], workers=1), poll_interval=0.1, progress_every=1000).run() == 1
    rec = json.loads((tmp_path / "batch" / "state.json").read_text())["jobs"]["sideways"]
    assert rec["status"] == "failed" and len(rec["attempts"]) == 1
    assert rec["attempts"][0]["outcome"] == "config" and rec["attempts"][0]["rc"] == 2
    assert "system.guidance.mode" in rec["error"]
    status = read_status(tmp_path / "batch" / "trials" / "sideways")
    assert status["error"]["category"] == "config" and status["run_id"] == rec["attempts"][0]["run_id"]


# ------------------------------------------------------------------------------ planted checkpoints
class _Payload:
    """Unpickling this creates ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("mode", ["--train", "--export"])
def test_planted_resume_checkpoint_never_runs(tmp_path, capsys, zipped, mode):
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "trial" / "ckpts" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 3, "state_dict": {}, "epoch": 0, "hook": _Payload(marker)}, ckpt,
               _use_new_zipfile_serialization=zipped)
    args = ["--config", "demo.yaml", mode, f"resume={ckpt}", f"exp_root_dir={tmp_path}", *TINY_OVERRIDES]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "refused" in err and "Traceback" not in err, err
    assert not marker.exists(), "the planted payload ran"
    torch.load(ckpt, weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
