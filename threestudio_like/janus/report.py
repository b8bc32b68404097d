"""Janus benchmark runner and report for real runs.

    python launch.py --bench janus --suite benchmarks/janus_suite.json
        --configs dreamfusion-sd21.yaml,mvdream-sd21.yaml --seeds 0,1,2 --out janus-report [key=value ...]

(or ``python -m threestudio_like.janus.report`` with the same arguments). For every config x
prompt x seed: trains (``python -m threestudio_like.cli --train``, one process per run, or in
this process with ``--in-process``; in ``<out>/runs/<config>/<prompt slug>/s<seed>``) unless the run
already has its turntable, computes the metrics (:mod:`.metrics`) unless ``metrics.json`` exists
(resumable), then writes ``<out>/report.md`` and ``<out>/index.html``: a table per config and
metric (Wilson 95% intervals for rates), bar charts with intervals and a contact sheet of each
asset's turntable.
"""
from __future__ import annotations

import argparse
import glob
import html
import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from threestudio_like.config import slugify
from threestudio_like.janus.metrics import HaarFaceDetector, aggregate, asset_metrics, try_clip
from threestudio_like.janus.provenance import bench_provenance, read_run_provenance
from threestudio_like.utils.progress import Progress

RATE_KEYS = ("janus_face", "janus_view", "second_peak_above_1")
MEAN_KEYS = ("face_arcs", "second_peak_ratio", "back_as_front_rate", "clip_score")


def load_suite(path: str) -> List[Dict[str, str]]:
    """A JSON list of prompts or of ``{prompt, subject, kind}`` objects."""
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    return [{"prompt": i} if isinstance(i, str) else dict(i) for i in items]


def turntable_frames(run_dir: str) -> List[str]:
    """PNG frames of the last turntable of the run (``save/it<step>-test/*.png``)."""
    dirs = sorted(glob.glob(os.path.join(run_dir, "*", "*", "save", "it*-test")),
                  key=lambda d: int(re.findall(r"it(\d+)-test", d)[-1]))
    if not dirs:
        return []
    return sorted(glob.glob(os.path.join(dirs[-1], "*.png")), key=lambda p: int(re.findall(r"(\d+)\.png", p)[-1]))


def train(config: str, prompt: str, seed: int, run_dir: str, overrides: Sequence[str], n_views: int,
          in_process: bool = False) -> None:
    """One training run, logged to ``<run_dir>/train.log``: a ``python -m threestudio_like.cli``
    process, or with ``in_process`` the same command line run by this interpreter (no start-up
    and import cost per run; for small runs and tests)."""
    args = ["--config", config, "--train", f"prompt={prompt}", f"seed={seed}", f"exp_root_dir={run_dir}",
            f"data.n_test_views={n_views}", *overrides]
    with open(os.path.join(run_dir, "train.log"), "w", encoding="utf-8") as log:
        if not in_process:
            subprocess.run([sys.executable, "-m", "threestudio_like.cli", *args], stdout=log,
                           stderr=subprocess.STDOUT, check=False)
            return
        import contextlib
        import traceback

        from threestudio_like.cli import main as cli_main

        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                cli_main(args)
            except Exception:  # a failed run is reported like a failed process: no turntable
                traceback.print_exc()


def contact_sheet(frames: Sequence[str], path: str, cols: int = 12) -> None:
    import imageio.v2 as imageio

    imgs = [imageio.imread(f)[..., :3] for f in frames]
    h, w = imgs[0].shape[:2]
    cols = max(1, min(cols, len(imgs)))
    rows = -(-len(imgs) // cols)
    sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    imageio.imwrite(path, sheet)


def bar_chart(summary: Dict[str, Dict[str, Any]], key: str, path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c for c in summary if key in summary[c]]
    if not names:
        return False
    vals, lo, hi = [], [], []
    for c in names:
        s = summary[c][key]
        if "rate" in s:
            vals.append(s["rate"]); lo.append(s["rate"] - s["lo"]); hi.append(s["hi"] - s["rate"])
        else:
            vals.append(s["mean"]); lo.append(s["std"] if s["n"] > 1 else 0); hi.append(lo[-1])
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(names), 3))
    ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=4, color="#4a7fb5")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_title(key + (" (Wilson 95%)" if key in RATE_KEYS else " (mean ± sd)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _fmt(s: Dict[str, Any]) -> str:
    if "rate" in s:
        return f"{s['k']}/{s['n']} = {s['rate']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"
    return f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"


# Marks every image data-media="ok" once the browser has decoded it ("broken" otherwise), so a
# headless browser's DOM dump tells whether the page really shows its images.
_MEDIA_CHECK = """<script>
document.querySelectorAll('img').forEach(function(i){
  function mark(){ i.dataset.media = i.naturalWidth > 0 ? 'ok' : 'broken'; }
  if (i.complete) { mark(); } else { i.addEventListener('load', mark); i.addEventListener('error', mark); }
});
</script>"""


def _provenance_lines(provenance: Dict[str, Any], assets: List[Dict[str, Any]]) -> List[str]:
    """Plain-text lines: a warning when runs had test weights, then what the numbers rest on."""
    lines = []
    n_test = provenance.get("runs_without_real_weights", 0)
    if n_test:
        lines.append(f"WARNING: {n_test} of {provenance.get('runs', 0)} runs used no real weights (tiny-random "
                     "test models or a weightless prior): these numbers say nothing about the real priors.")
    weights = {}
    for a in assets:
        for key, w in ((a.get("provenance") or {}).get("weights") or {}).items():
            ident = w.get("revision") or w.get("fingerprint") or "-"
            weights[f"{a['config']}: {key}"] = f"{w['id']} ({w['kind']}, {ident})"
    m = provenance.get("machine") or {}
    lines += [f"code {provenance.get('code_version')}; created {provenance.get('created')}",
              f"machine: {m.get('platform')}, Python {m.get('python')}, torch {m.get('torch')}, "
              f"{m.get('cpu_count')} CPUs, GPU {m.get('gpu') or 'none'}",
              f"seeds {provenance.get('seeds')}; overrides {' '.join(provenance.get('overrides') or []) or 'none'}"]
    steps = sorted({str((a.get("provenance") or {}).get("max_steps")) for a in assets})
    lines.append(f"training steps: {', '.join(steps)}")
    lines += [f"weights {k} = {v}" for k, v in weights.items()]
    return lines


def _table(rows: Dict[str, Dict[str, Any]], keys: Sequence[str], cls: str,
           first: str = "config") -> Tuple[List[str], List[str]]:
    """A Markdown and an HTML table, one row per name, a cell per metric key."""
    md = [f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    hp = [f"<table border='1' class='{cls}'><tr><th>{first}</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for c, s in rows.items():
        cells = [_fmt(s[k]) if k in s else "—" for k in keys]
        md.append(f"| {c} | " + " | ".join(cells) + " |")
        hp.append(f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    return md, hp + ["</table>"]


def write_report(out: str, assets: List[Dict[str, Any]], summary: Dict[str, Dict[str, Any]],
                 by_kind: Optional[Dict[str, Dict[str, Any]]] = None,
                 provenance: Optional[Dict[str, Any]] = None) -> None:
    """``report.md`` and ``index.html``: provenance, tables (overall and per prompt kind), charts
    and contact sheets."""
    charts = [k for k in RATE_KEYS + MEAN_KEYS if bar_chart(summary, k, os.path.join(out, f"chart_{k}.png"))]
    md = ["# Janus benchmark", ""]
    hp = ["<!doctype html><html><head><meta charset='utf-8'><title>Janus benchmark</title></head><body>",
          "<h1>Janus benchmark</h1>"]
    if provenance:
        lines = _provenance_lines(provenance, assets)
        md += [f"- {line}" for line in lines] + [""]
        warn = lines[0] if lines[0].startswith("WARNING") else None
        if warn:
            hp.append(f"<p class='warning' style='background:#fdd;padding:8px;font-weight:bold'>{html.escape(warn)}</p>")
        hp.append("<ul class='provenance'>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines if x != warn) + "</ul>")
    keys = [k for k in RATE_KEYS + MEAN_KEYS if any(k in s for s in summary.values())]
    table_md, table_hp = _table(summary, keys, "summary")
    md += table_md
    hp += table_hp
    kinds = {f"{c} / {k or 'unlabelled'}": s for c, per in (by_kind or {}).items() for k, s in per.items()}
    if kinds:
        table_md, table_hp = _table(kinds, keys, "by-kind", "config / prompt kind")
        md += ["", "## Per prompt kind", ""] + table_md
        hp += ["<h2>Per prompt kind</h2>"] + table_hp
    md += ["", "## Charts", ""] + [f"![{k}](chart_{k}.png)" for k in charts]
    hp += ["<h2>Charts</h2>"] + [f"<img src='chart_{k}.png' alt='{k}'>" for k in charts]
    md += ["", "## Assets", "", "| config | prompt | seed | face arcs | second-peak ratio | turntable |", "|---|---|---|---|---|---|"]
    hp += ["<h2>Assets</h2><table border='1' class='assets'><tr><th>config</th><th>prompt</th><th>seed</th><th>face arcs</th>"
           "<th>second-peak ratio</th><th>turntable</th></tr>"]
    for a in assets:
        fa, jpr = a.get("face_arcs", "—"), a.get("second_peak_ratio", float("nan"))
        md.append(f"| {a['config']} | {a['prompt']} | {a['seed']} | {fa} | {jpr:.2f} | ![]({a['sheet']}) |")
        hp.append(f"<tr><td>{html.escape(a['config'])}</td><td>{html.escape(a['prompt'])}</td><td>{a['seed']}</td>"
                  f"<td>{fa}</td><td>{jpr:.2f}</td><td><img src='{html.escape(a['sheet'])}' width='600'></td></tr>")
    hp.append("</table>" + _MEDIA_CHECK + "</body></html>")
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(hp) + "\n")


def run_bench(suite: str, configs: Sequence[str], seeds: Sequence[int], out: str, overrides: Sequence[str] = (),
              n_views: int = 36, clip: Optional[str] = None, in_process: bool = False) -> Dict[str, Any]:
    """Train or reuse every run, measure, and write the report; returns assets and summaries."""
    os.makedirs(out, exist_ok=True)
    prompts = load_suite(suite)
    detector = HaarFaceDetector()
    clip_model = try_clip(clip)
    assets: List[Dict[str, Any]] = []
    progress = Progress("janus bench: run", len(configs) * len(prompts) * len(seeds))
    for config in configs:
        cname = os.path.splitext(os.path.basename(config))[0]
        for item in prompts:
            for seed in seeds:
                progress.update(done=progress.done)  # prints the runs finished so far
                progress.done += 1
                rel = os.path.join("runs", cname, slugify(item["prompt"], max_len=48), f"s{seed}")
                run_dir = os.path.join(out, rel)
                os.makedirs(run_dir, exist_ok=True)
                mpath = os.path.join(run_dir, "metrics.json")
                if os.path.isfile(mpath):
                    with open(mpath, encoding="utf-8") as f:
                        cached = json.load(f)
                    cached.setdefault("provenance", read_run_provenance(run_dir))
                    assets.append(cached)
                    continue
                if not turntable_frames(run_dir):
                    train(config, item["prompt"], seed, run_dir, overrides, n_views, in_process)
                frames = turntable_frames(run_dir)
                if not frames:
                    print(f"run failed: {run_dir} (see train.log)", file=sys.stderr)
                    continue
                import imageio.v2 as imageio

                views = np.stack([imageio.imread(p)[..., :3] for p in frames])
                m = asset_metrics(views, item["prompt"], item.get("subject"), detector=detector, clip=clip_model)
                sheet = os.path.join(rel, "turntable.png")
                contact_sheet(frames, os.path.join(out, sheet))
                m.update({"config": cname, "prompt": item["prompt"], "kind": item.get("kind", ""),
                          "seed": seed, "sheet": sheet, "provenance": read_run_provenance(run_dir)})
                with open(mpath, "w", encoding="utf-8") as f:
                    json.dump(m, f, indent=1)
                assets.append(m)
    progress.close()
    summary = {c: aggregate([a for a in assets if a["config"] == c])
               for c in dict.fromkeys(a["config"] for a in assets)}
    by_kind = {c: {k: aggregate([a for a in assets if a["config"] == c and a.get("kind", "") == k])
                   for k in dict.fromkeys(a.get("kind", "") for a in assets if a["config"] == c)}
               for c in summary}
    provenance = bench_provenance(configs, seeds, overrides, assets)
    write_report(out, assets, summary, by_kind, provenance)
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"provenance": provenance, "summary": summary, "summary_by_kind": by_kind, "assets": assets},
                  f, indent=1, default=str)
    return {"assets": assets, "summary": summary, "summary_by_kind": by_kind, "provenance": provenance}


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Command line (also ``python launch.py --bench janus ...``)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True)
    p.add_argument("--configs", required=True, help="comma-separated config files or names in configs/")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default="outputs/janus-report")
    p.add_argument("--n-views", type=int, default=36)
    p.add_argument("--clip", default=None, help="CLIP weights (folder or cached id) for view classes / CLIP score")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process instead of one process per run (small runs)")
    p.add_argument("overrides", nargs="*", help="key=value passed to every training run")
    a = p.parse_args(argv)
    r = run_bench(a.suite, a.configs.split(","), [int(s) for s in a.seeds.split(",")], a.out, a.overrides,
                  a.n_views, a.clip, a.in_process)
    print(f"report: {os.path.join(a.out, 'index.html')} ({len(r['assets'])} assets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
