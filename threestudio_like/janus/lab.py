"""The reference-object lab: Janus and its cures reproduced with a known answer, on CPU.

The bundled reference object (face at +x, tail at -x, front/back halves in different colours;
:mod:`threestudio_like.reference.object`) is unrolled into its *turntable texture*: the
colour of the first surface hit by horizontal rays cast towards the vertical axis, for ``n_azimuth``
azimuths x ``rows`` heights. A camera at azimuth ``a`` sees a ``window_deg`` window of that
texture centred on ``a``. The learned object is such a texture, distilled by SDS from the
reference-object prior in one of its modes (:mod:`threestudio_like.reference.modes`) with classifier-free guidance, exact
posterior means and an annealed timestep range; the result is measured exactly and
rotation-invariantly against the true turntable (:mod:`.measures`).

This 1-D turntable keeps every mechanism of the 3-D case (which candidates each query view gets,
CFG against other objects, view windows overlapping between neighbouring cameras) while a run
takes about a second, so a benchmark over modes x seeds fits in a CPU test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from threestudio_like.config import parse_structured
from threestudio_like.guidance.base import BaseGuidance
from threestudio_like.utils.progress import Progress
from threestudio_like.reference import modes as M
from threestudio_like.reference.object import ReferenceObjectGeometry
from threestudio_like.janus.measures import janus_measures


@torch.no_grad()
def reference_texture(n_azimuth: int = 36, rows: int = 6, z_range=(-0.35, 0.55), iters: int = 96) -> Tensor:
    """``[n_azimuth, rows, 3]`` colours in [0, 1] of the reference object around the z axis
    (sphere tracing of its analytic SDF; white where a ray misses)."""
    geo = ReferenceObjectGeometry({})
    az = torch.arange(n_azimuth, dtype=torch.float32) * (2 * torch.pi / n_azimuth)
    z = torch.linspace(z_range[0], z_range[1], rows)
    dirs = torch.stack([torch.cos(az), torch.sin(az), torch.zeros_like(az)], -1)[:, None].expand(-1, rows, -1)
    origin = 1.2 * dirs + torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], -1)[None]
    s = torch.zeros(n_azimuth, rows)
    for _ in range(iters):
        d, _ = geo.sdf(origin - s[..., None] * dirs)
        s = s + d.clamp_min(2e-3)
        s = s.clamp_max(2.4)
    p = origin - s[..., None] * dirs
    d, nearest = geo.sdf(p)
    rgb = geo.colour(p, nearest)
    hit = (d < 1e-2) & (s < 2.4)
    return torch.where(hit[..., None], rgb, torch.ones_like(rgb))


def other_textures(n: int, n_azimuth: int, rows: int, seed: int = 1234) -> Tensor:
    """``[n, n_azimuth, rows, 3]`` textures of other objects: random colour patches (piecewise
    constant in azimuth and height), the unconditional data set's "many other objects"."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        n_seg, n_band = int(torch.randint(3, 8, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        colours = torch.rand(n_seg, n_band, 3, generator=g)
        cuts = torch.sort(torch.randint(0, n_azimuth, (n_seg,), generator=g)).values
        seg = torch.bucketize(torch.arange(n_azimuth), cuts, right=True) % n_seg
        band = (torch.arange(rows) * n_band) // rows
        out.append(colours[seg[:, None], band[None]])
    return torch.stack(out)


def turntable_views(texture: Tensor, window: int, azimuth_idx: Optional[Tensor] = None) -> Tensor:
    """Views ``[B, window, rows, 3]`` of a texture ``[N, rows, 3]`` at azimuth indices (all N
    by default): the ``window`` texture columns centred on each azimuth (circular)."""
    n = texture.shape[0]
    if azimuth_idx is None:
        azimuth_idx = torch.arange(n)
    offsets = torch.arange(window) - window // 2
    return texture[(azimuth_idx[:, None] + offsets[None]) % n]


class TurntableLabPrior(BaseGuidance):
    """The reference-object prior on the 1-D turntable: exact conditional and unconditional
    denoisers per mode, combined by CFG, scored by the shared SDS procedure."""

    @dataclass
    class Config(BaseGuidance.Config):
        mode: M.Mode = "unconditioned"
        """unconditioned | view-binned | camera-conditioned | multi-view-joint."""
        kappa: float = 2.0
        """Concentration of the front-biased von Mises view distribution of the data."""
        n_view: int = 4
        """Views per joint set (multi-view-joint): 360/n_view degrees apart."""

    cfg: Config

    def set_data(self, ours: Tensor, others: Tensor) -> None:
        """``ours`` ``[N, ...]`` true views at N uniform azimuths; ``others`` ``[O, N, ...]``."""
        n = ours.shape[0]
        self.bank_az = torch.arange(n, dtype=torch.float32) * 360.0 / n
        self.ours = ours
        everyone = torch.cat([ours[None], others], 0)  # uniform views of every object
        self.uncond = M.unconditional_candidates(self.cfg.mode, everyone, self.cfg.n_view)

    def score(self, views: Tensor, azimuth_deg: Tensor, generator=None) -> Dict[str, Tensor]:
        """SDS on ``views`` ``[B, ...]`` (in [-1, 1]) at ``azimuth_deg`` ``[B]``; for
        multi-view-joint, B = groups x n_view with each group's views 360/n_view apart."""
        c = self.cfg
        latents = views
        if c.mode == "multi-view-joint":
            latents = views.reshape(-1, c.n_view, *views.shape[1:])
        cond = M.conditional_candidates(c.mode, self.ours, self.bank_az, azimuth_deg, c.kappa, c.n_view)
        return self.sds(
            latents,
            lambda x_t, t: M.guided_noise(x_t, t, self.alphas_cumprod, cond, self.uncond, c.guidance_scale),
            generator=generator,
        )


@dataclass
class LabConfig:
    """One lab run: the turntable, the prior, the optimisation."""

    mode: str = "unconditioned"
    guidance_scale: float = 7.5
    kappa: float = 2.0
    n_azimuth: int = 36
    """Texture columns around the axis (10 degrees each by default)."""
    rows: int = 6
    window_deg: float = 90.0
    n_other: int = 8
    """Other objects in the unconditional data set."""
    steps: int = 300
    batch_size: int = 8
    lr: float = 0.03
    min_step_percent: float = 0.02
    max_step_percent: tuple = (0.98, 0.3)
    """Start and end of the linearly annealed upper timestep bound."""
    seed: int = 0


class TurntableLab:
    """Distil and measure one object per (mode, seed); reference data built once."""

    def __init__(self, cfg: Optional[dict] = None) -> None:
        self.cfg: LabConfig = parse_structured(LabConfig, cfg or {})
        c = self.cfg
        self.window = max(1, round(c.n_azimuth * c.window_deg / 360.0))
        self.texture = reference_texture(c.n_azimuth, c.rows) * 2 - 1
        self.others = other_textures(c.n_other, c.n_azimuth, c.rows) * 2 - 1
        self.truth = turntable_views(self.texture, self.window)

    def prior(self, mode: str, guidance_scale: float) -> TurntableLabPrior:
        c = self.cfg
        p = TurntableLabPrior({
            "mode": mode, "guidance_scale": guidance_scale, "kappa": c.kappa,
            "min_step_percent": c.min_step_percent,
            "max_step_percent": [0, c.max_step_percent[0], c.max_step_percent[1], c.steps],
            "shared_timestep": False,
        })
        others = torch.stack([turntable_views(o, self.window) for o in self.others])
        p.set_data(self.truth, others)
        return p

    def train(self, mode: Optional[str] = None, seed: Optional[int] = None,
              guidance_scale: Optional[float] = None) -> Tensor:
        """The learned texture ``[N, rows, 3]`` in [-1, 1]."""
        c = self.cfg
        mode = c.mode if mode is None else mode
        seed = c.seed if seed is None else seed
        scale = c.guidance_scale if guidance_scale is None else guidance_scale
        g = torch.Generator().manual_seed(seed)
        prior = self.prior(mode, scale)
        tex = (0.01 * torch.randn(self.texture.shape, generator=g)).requires_grad_(True)
        opt = torch.optim.Adam([tex], lr=c.lr, betas=(0.9, 0.99))
        n = c.n_azimuth
        for step in range(c.steps):
            prior.update_step(0, step)
            if mode == "multi-view-joint":
                groups = max(1, c.batch_size // 4)
                base = torch.randint(0, n, (groups,), generator=g)
                idx = (base[:, None] + (n // 4) * torch.arange(4)[None]).reshape(-1)
            else:
                idx = torch.randint(0, n, (c.batch_size,), generator=g)
            views = turntable_views(tex, self.window, idx)
            out = prior.score(views, idx.float() * 360.0 / n, generator=g)
            opt.zero_grad()
            out["loss_sds"].backward()
            opt.step()
            with torch.no_grad():
                tex.clamp_(-1, 1)
        return tex.detach()

    def measure(self, texture: Tensor) -> Dict[str, float]:
        """Exact Janus measures of a learned texture against the reference object."""
        return janus_measures(turntable_views(texture, self.window), self.truth)

    def run(self, mode: str, seed: int, guidance_scale: Optional[float] = None) -> Dict[str, float]:
        tex = self.train(mode, seed, guidance_scale)
        return {"mode": mode, "seed": seed, **self.measure(tex)}


# The lab benchmark: (label, mode, guidance scale or None for the default).
LAB_SETTINGS = (
    ("unconditioned, no CFG", "unconditioned", 1.0),
    ("unconditioned", "unconditioned", None),
    ("view-binned", "view-binned", None),
    ("camera-conditioned", "camera-conditioned", None),
    ("multi-view-joint", "multi-view-joint", None),
)


def run_lab_benchmark(seeds=(0, 1, 2), cfg: Optional[dict] = None, settings=LAB_SETTINGS) -> Dict[str, Any]:
    """Every setting x seed: per-run measures and per-setting summaries with Wilson intervals
    (``janus`` = face arcs >= 2, ``one_face`` = exactly one arc)."""
    from threestudio_like.janus.stats import mean_summary, rate_summary

    lab = TurntableLab(cfg)
    runs, summary = [], {}
    progress = Progress("janus lab: run", len(settings) * len(seeds))
    for label, mode, scale in settings:
        rows = []
        for seed in seeds:
            r = lab.run(mode, int(seed), scale)
            progress.update()
            r["setting"] = label
            r["guidance_scale"] = lab.cfg.guidance_scale if scale is None else scale
            rows.append(r)
        runs.extend(rows)
        summary[label] = {
            "face_arcs": [int(r["face_arcs"]) for r in rows],
            "face_arcs_mean": mean_summary([r["face_arcs"] for r in rows]),
            "janus": rate_summary([r["face_arcs"] >= 2 for r in rows]),
            "one_face": rate_summary([r["face_arcs"] == 1 for r in rows]),
            "back_front_fraction": mean_summary([r["back_front_fraction"] for r in rows]),
        }
    progress.close()
    return {"config": dict(vars(lab.cfg)), "runs": runs, "summary": summary}


def lab_markdown(result: Dict[str, Any]) -> str:
    """A Markdown table of :func:`run_lab_benchmark`'s summary."""
    lines = [
        "| setting | face arcs per seed | Janus rate (>= 2 arcs) [95% Wilson] | one-face rate [95% Wilson] | back-half front fraction |",
        "|---|---|---|---|---|",
    ]
    for label, s in result["summary"].items():
        j, o, b = s["janus"], s["one_face"], s["back_front_fraction"]
        lines.append(
            f"| {label} | {', '.join(map(str, s['face_arcs']))} | {j['k']}/{j['n']} = {j['rate']:.2f} "
            f"[{j['lo']:.2f}, {j['hi']:.2f}] | {o['k']}/{o['n']} = {o['rate']:.2f} [{o['lo']:.2f}, {o['hi']:.2f}] "
            f"| {b['mean']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def lab_main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """``python benchmarks/janus_lab.py`` / ``python launch.py --bench lab``: every setting of
    :data:`LAB_SETTINGS` over the seeds; prints the Markdown table, optionally writes JSON."""
    import argparse
    import json
    import os
    import time

    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(
        prog=prog, description="Reference-object lab: Janus per prior mode, measured exactly "
        "(face arcs, back-half front fraction), with Wilson 95% intervals.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="outputs/janus-lab/lab.json",
                        help="where the full result goes as JSON (with lab.md beside it); '' for none")
    parser.add_argument("overrides", nargs="*",
                        help="LabConfig key=value (guidance_scale=7.5, kappa=2, steps=300, ...)")
    args = parser.parse_args(argv)
    cfg = OmegaConf.to_container(OmegaConf.from_dotlist(args.overrides)) if args.overrides else {}
    torch.set_num_threads(1)
    start = time.time()
    result = run_lab_benchmark([int(s) for s in args.seeds.split(",")], cfg)
    table = lab_markdown(result)
    print(table)
    print(f"({len(result['runs'])} runs in {time.time() - start:.1f} s)")
    if args.out:
        from threestudio_like.janus.provenance import code_version, machine

        result["provenance"] = {"seeds": args.seeds, "overrides": list(args.overrides), "code_version": code_version(),
                                "machine": machine(), "seconds": round(time.time() - start, 1),
                                "note": "reference-object lab: an exact known-answer prior, no diffusion weights"}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
        with open(os.path.splitext(args.out)[0] + ".md", "w", encoding="utf-8") as f:
            f.write(table)
        print(f"written: {args.out} and {os.path.splitext(args.out)[0]}.md")
    return 0
