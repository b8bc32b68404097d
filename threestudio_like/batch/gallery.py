"""Morning review: ``index.html`` (a static gallery) and ``summary.json`` in the batch folder.

The page opens from disk with no server and no network: one self-contained HTML file with
inline CSS and a few lines of inline script, and only *relative* links into the batch folder
(turntable videos, thumbnails, meshes, logs, configs), so the folder can be copied or moved
as a whole. Per asset it shows the prompt (or the input image), recipe, seed, time taken,
final loss, steps and attempts, the turntable video (plays on hover), a thumbnail and links
to ``.glb/.obj/.ply`` and to the job's 3D view in ``preview.html`` (:mod:`threestudio_like.preview`,
written beside it); failed jobs show their error and a link to their log. A trial's outputs,
steps and final loss come from its ``status.json`` (what the run recorded writing them); only a
trial without one is scanned by file names.

The inline script marks every video and image ``data-media="ok"`` once the browser has
loaded it (``"broken"`` and a visible notice otherwise), which the tests read back from a
headless browser.
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import quote

from threestudio_like.batch.state import BatchState
from threestudio_like.preview.page import PAGE_NAME, write_batch_preview
from threestudio_like.run_status import read_status
from threestudio_like.utils.files import atomic_write_text

MESH_FORMATS = ("glb", "obj", "ply", "usdz")


# ------------------------------------------------------------------------------------------
# results of one trial


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _max_step(names: Iterable[str], pattern: str) -> Optional[Tuple[int, str]]:
    best: Optional[Tuple[int, str]] = None
    for name in names:
        m = re.fullmatch(pattern, name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), name)
    return best


def read_final_loss(metrics_csv: Union[str, Path]) -> Tuple[Optional[float], Optional[int]]:
    """The last logged ``train/loss`` and its step from a Lightning ``metrics.csv``."""
    loss, step = None, None
    try:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                value = row.get("train/loss")
                if value not in (None, ""):
                    try:
                        loss = float(value)
                        step = int(float(row.get("step") or 0))
                    except ValueError:
                        continue
    except OSError:
        pass
    return loss, step


def read_loss_curve(metrics_csv: Union[str, Path], max_points: int = 120) -> List[List[float]]:
    """``[step, loss, attempt]`` of every logged ``train/loss`` (every attempt of a resumed run),
    thinned to at most ``max_points`` points."""
    points: List[List[float]] = []
    try:
        with open(metrics_csv, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    loss = float(row.get("train/loss") or "nan")
                    step = int(float(row.get("step") or 0))
                    attempt = int(float(row.get("attempt") or 1))
                except ValueError:
                    continue
                if math.isfinite(loss):
                    points.append([step, loss, attempt])
    except OSError:
        return []
    stride = max(1, math.ceil(len(points) / max_points))
    return points[::stride]


def collect_result(batch_dir: Union[str, Path], trial_rel: str) -> Dict[str, Any]:
    """Outputs of a trial directory, as paths relative to the batch folder.

    Read from the trial's ``status.json`` (:func:`result_from_status`) when it has one; trials
    without a status (written before it existed) are scanned (:func:`scan_trial`).
    """
    status = read_status(Path(batch_dir) / trial_rel)
    if status is not None and isinstance(status.get("outputs"), dict):
        return result_from_status(batch_dir, trial_rel, status)
    return scan_trial(batch_dir, trial_rel)


def loss_svg(points: List[List[float]], width: int = 240, height: int = 48) -> str:
    """An inline SVG of the loss over steps (log scale), one polyline per attempt."""
    if len(points) < 2:
        return ""
    steps = [p[0] for p in points]
    logs = [math.log10(max(p[1], 1e-12)) for p in points]
    s0, s1, l0, l1 = min(steps), max(steps), min(logs), max(logs)
    lines = []
    for attempt in sorted({int(p[2]) for p in points}):
        xy = [(width * (s - s0) / max(s1 - s0, 1), height - height * (v - l0) / max(l1 - l0, 1e-9))
              for (s, _, a), v in zip(points, logs) if int(a) == attempt]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        lines.append(f'<polyline class="attempt{attempt % 4}" points="{coords}"><title>attempt {attempt}</title></polyline>')
    return (f'<svg class="loss" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="training loss, steps {s0} to {s1}">{"".join(lines)}</svg>')


def _empty_result() -> Dict[str, Any]:
    return {"video": None, "thumbnail": None, "meshes": {}, "final_loss": None, "steps": None}


def _finite(value: Any) -> Optional[float]:
    """A loss for the summary: JSON has no NaN."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def result_from_status(batch_dir: Union[str, Path], trial_rel: str, status: Dict[str, Any]) -> Dict[str, Any]:
    """The outputs a run recorded in its status (files that still exist): ``video`` (mp4, else
    gif), ``thumbnail`` (the turntable's first frame, the front view, else the last validation
    image), ``meshes`` by format, ``steps`` (the step reached) and ``final_loss`` (the last loss)."""
    batch_dir = Path(batch_dir)
    trial = batch_dir / trial_rel
    outputs = status["outputs"]

    def existing(rel: Any) -> Optional[str]:
        if not isinstance(rel, str) or not rel:
            return None
        path = trial / rel
        return _rel(path, batch_dir) if path.is_file() else None

    out = _empty_result()
    out["video"] = existing(outputs.get("video")) or existing(outputs.get("gif"))
    frames = outputs.get("turntable_frames")
    out["thumbnail"] = (existing(f"{frames}/0.png") if isinstance(frames, str) else None) \
        or existing(outputs.get("validation"))
    meshes = outputs.get("meshes") if isinstance(outputs.get("meshes"), dict) else {}
    for fmt in MESH_FORMATS:
        found = existing(meshes.get(fmt))
        if found:
            out["meshes"][fmt] = found
    step = status.get("step")
    out["steps"] = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None
    out["final_loss"] = _finite(status.get("loss"))
    return out


def scan_trial(batch_dir: Union[str, Path], trial_rel: str) -> Dict[str, Any]:
    """Outputs of a trial without a ``status.json``, found by their names.

    ``video``: the latest ``save/it<N>-test.mp4`` (or ``.gif``); ``thumbnail``: its first frame
    (``save/it<N>-test/0.png``, the front view) or else the latest validation grid; ``meshes``:
    the latest ``save/it<N>-export/model.*``; ``final_loss``: the last ``train/loss`` logged.
    """
    batch_dir = Path(batch_dir)
    trial = batch_dir / trial_rel
    save = trial / "save"
    names = os.listdir(save) if save.is_dir() else []
    out = _empty_result()
    steps: List[int] = []
    video = _max_step(names, r"it(\d+)-test\.mp4") or _max_step(names, r"it(\d+)-test\.gif")
    if video:
        out["video"] = _rel(save / video[1], batch_dir)
        steps.append(video[0])
        frames = save / f"it{video[0]}-test"
        if (frames / "0.png").is_file():
            out["thumbnail"] = _rel(frames / "0.png", batch_dir)
    if out["thumbnail"] is None:
        grid = _max_step(names, r"it(\d+)-0\.png")
        if grid:
            out["thumbnail"] = _rel(save / grid[1], batch_dir)
    export = _max_step([n for n in names if (save / n).is_dir()], r"it(\d+)-export")
    if export:
        steps.append(export[0])
        for fmt in MESH_FORMATS:
            for mesh in sorted((save / export[1]).glob(f"*.{fmt}")):
                out["meshes"][fmt] = _rel(mesh, batch_dir)
                break
    loss, loss_step = read_final_loss(trial / "logs" / "csv" / "metrics.csv")
    out["final_loss"] = _finite(loss)
    if loss_step is not None:
        steps.append(loss_step + 1)
    out["steps"] = max(steps) if steps else None
    return out


# ------------------------------------------------------------------------------------------
# summary


def format_seconds(seconds: Optional[float]) -> str:
    """``42.0s``, ``3m05s``, ``2h07m``."""
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def build_summary(state: BatchState) -> Dict[str, Any]:
    """Everything the review needs, as plain data (also written as ``summary.json``)."""
    jobs = []
    starts, ends = [], []
    for rec in state.ordered():
        result = rec.get("result") or {}
        spec = rec.get("spec") or {}
        last = rec["attempts"][-1] if rec.get("attempts") else {}
        if rec.get("first_started"):
            starts.append(rec["first_started"])
        if rec.get("finished"):
            ends.append(rec["finished"])
        jobs.append({
            "id": rec["id"],
            "index": rec.get("index"),
            "status": rec["status"],
            "prompt": spec.get("prompt"),
            "image": spec.get("image"),
            "input_image": rec.get("input_image"),
            "config": spec.get("config"),
            "seed": spec.get("seed"),
            "overrides": spec.get("overrides") or [],
            "seconds": round(rec.get("seconds") or 0.0, 2),
            "attempts": len([a for a in rec.get("attempts", []) if a.get("outcome") != "interrupted"]),
            "final_loss": result.get("final_loss"),
            "loss_curve": read_loss_curve(state.batch_dir / rec["trial_dir"] / "logs" / "csv" / "metrics.csv")
            if rec.get("trial_dir") else [],
            "steps": result.get("steps"),
            "outcome": last.get("outcome"),
            "error": rec.get("error"),
            "video": result.get("video"),
            "thumbnail": result.get("thumbnail"),
            "meshes": result.get("meshes") or {},
            "log": rec.get("log"),
            "config_file": rec.get("config_file"),
            "trial_dir": rec.get("trial_dir"),
        })
    return {
        "batch": state.data.get("batch"),
        "job_file": state.data.get("job_file"),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "counts": state.counts(),
        "total_seconds": round(sum(j["seconds"] for j in jobs), 2),
        "wall_seconds": round(max(ends) - min(starts), 2) if starts and ends else None,
        "jobs": jobs,
    }


# ------------------------------------------------------------------------------------------
# HTML

CSS = """
:root{--bg:#f4f4f1;--card:#fff;--ink:#1d1d1b;--mute:#6b6b66;--ok:#23824a;--bad:#c0392b;--wait:#8a7a2a;--line:#ddddd6}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header.top{padding:18px 24px 8px}h1{margin:0 0 4px;font-size:22px}.stats{color:var(--mute)}
.stats b{color:var(--ink)}nav.filters{padding:6px 24px}nav.filters button{border:1px solid var(--line);background:var(--card);padding:4px 12px;border-radius:14px;margin-right:6px;cursor:pointer}
nav.filters button.on{background:var(--ink);color:#fff}
section.failed{margin:8px 24px;padding:10px 14px;border-left:4px solid var(--bad);background:#fff5f3}
section.failed h2{margin:0 0 6px;font-size:15px;color:var(--bad)}section.failed li{margin:2px 0}
main.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:16px;padding:12px 24px 32px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;overflow:hidden;display:flex;flex-direction:column}
.card.failed{border-color:var(--bad)}.media{background:#e9e9e4;aspect-ratio:1/1;display:flex;align-items:center;justify-content:center}
.media video,.media img.still{width:100%;height:100%;object-fit:contain;image-rendering:auto}.placeholder{color:var(--mute)}
.info{padding:10px 12px 12px}.head{display:flex;gap:10px;align-items:center}
.thumb{width:48px;height:48px;object-fit:contain;border:1px solid var(--line);border-radius:4px;background:#eee}
.head h2{font-size:14px;margin:0;word-break:break-all}.badge{display:inline-block;font-size:11px;padding:1px 8px;border-radius:9px;color:#fff;background:var(--mute)}
.badge.done{background:var(--ok)}.badge.failed{background:var(--bad)}.badge.running,.badge.pending{background:var(--wait)}
.prompt{margin:8px 0;font-style:italic}.cond{display:flex;gap:8px;align-items:center;margin:8px 0}.cond img{width:56px;height:56px;object-fit:contain;border:1px solid var(--line)}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:6px 0}dt{color:var(--mute)}dd{margin:0}
.files a{display:inline-block;margin:6px 6px 0 0;padding:2px 9px;border:1px solid var(--line);border-radius:4px;text-decoration:none;color:var(--ink)}
.files a.model{border-color:var(--ok);color:var(--ok);font-weight:600}
pre.error{white-space:pre-wrap;word-break:break-word;background:#fff5f3;color:var(--bad);padding:6px 8px;border-radius:4px;margin:8px 0 0;font-size:12px}
details{margin-top:6px;color:var(--mute)}code{font-size:12px}.broken-note{color:var(--bad);font-size:12px}
footer{color:var(--mute);padding:0 24px 24px}
svg.loss{display:block;margin:6px 0;background:#fafaf7;border:1px solid var(--line)}svg.loss polyline{fill:none;stroke-width:1.5}
.attempt1{stroke:#2f5d8a}.attempt2{stroke:#c0792b}.attempt3{stroke:#23824a}.attempt0{stroke:#8a2f6d}
"""

SCRIPT = """
(function(){
  function mark(el, ok){
    el.dataset.media = ok ? 'ok' : 'broken';
    if(!ok){var n=document.createElement('div');n.className='broken-note';
      n.textContent='missing or unreadable: '+(el.getAttribute('src')||'');el.insertAdjacentElement('afterend',n);}
  }
  document.querySelectorAll('video').forEach(function(v){
    v.addEventListener('loadeddata', function(){ mark(v, true); });
    v.addEventListener('error', function(){ mark(v, false); });
    if(v.readyState >= 2){ mark(v, true); }
    var card = v.closest('.card');
    if(card){
      card.addEventListener('mouseenter', function(){ var p=v.play(); if(p&&p.catch){p.catch(function(){});} });
      card.addEventListener('mouseleave', function(){ v.pause(); });
    }
  });
  document.querySelectorAll('img').forEach(function(i){
    if(i.complete){ mark(i, i.naturalWidth > 0); }
    else { i.addEventListener('load', function(){ mark(i, i.naturalWidth > 0); });
           i.addEventListener('error', function(){ mark(i, false); }); }
  });
  document.querySelectorAll('nav.filters button').forEach(function(b){
    b.addEventListener('click', function(){
      var f=b.dataset.filter;
      document.querySelectorAll('nav.filters button').forEach(function(o){o.classList.toggle('on', o===b);});
      document.querySelectorAll('.card').forEach(function(c){
        c.hidden = !(f==='all' || c.dataset.status===f || (f==='pending' && c.dataset.status==='running'));
      });
    });
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _u(rel: str) -> str:
    """A relative URL for a path inside the batch folder."""
    return quote(rel, safe="/._-~")


def _card(job: Dict[str, Any]) -> str:
    status = job["status"]
    parts = [f'<article class="card {status}" id="job-{_e(job["id"])}" data-job="{_e(job["id"])}" '
             f'data-status="{status}">']
    thumb = job.get("thumbnail")
    if job.get("video"):
        poster = f' poster="{_u(thumb)}"' if thumb else ""
        parts.append(f'<div class="media"><video class="turntable" src="{_u(job["video"])}"{poster} muted loop '
                     f'playsinline controls preload="auto" title="turntable of {_e(job["id"])}"></video></div>')
    elif thumb:
        parts.append(f'<div class="media"><img class="still" src="{_u(thumb)}" alt="last render of {_e(job["id"])}"></div>')
    else:
        text = {"failed": "no output", "running": "running...", "pending": "waiting"}.get(status, "no turntable")
        parts.append(f'<div class="media"><span class="placeholder">{text}</span></div>')
    parts.append('<div class="info"><div class="head">')
    if thumb:
        parts.append(f'<img class="thumb" src="{_u(thumb)}" alt="thumbnail of {_e(job["id"])}">')
    parts.append(f'<div><h2>{_e(job["id"])}</h2><span class="badge {status}">{status}</span></div></div>')
    if job.get("prompt"):
        parts.append(f'<p class="prompt">&ldquo;{_e(job["prompt"])}&rdquo;</p>')
    if job.get("image"):
        images = job["image"] if isinstance(job["image"], list) else [job["image"]]
        shown = f'<img src="{_u(job["input_image"])}" alt="input image">' if job.get("input_image") else ""
        parts.append(f'<div class="cond">{shown}<span>image: {_e(", ".join(os.path.basename(i) for i in images))}</span></div>')
    loss = job.get("final_loss")
    rows = [
        ("config", job.get("config")),
        ("seed", job.get("seed")),
        ("time", format_seconds(job.get("seconds")) if job.get("seconds") else "-"),
        ("final loss", f"{loss:.4g}" if isinstance(loss, (int, float)) else "-"),
        ("steps", job.get("steps") if job.get("steps") is not None else "-"),
        ("attempts", job.get("attempts")),
    ]
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>")
    parts.append(loss_svg(job.get("loss_curve") or []))
    if job.get("overrides"):
        parts.append("<details><summary>overrides</summary><code>"
                     + "<br>".join(_e(o) for o in job["overrides"]) + "</code></details>")
    links = [f'<a class="model" href="{_u(job["meshes"][fmt])}" download>{fmt.upper()}</a>'
             for fmt in MESH_FORMATS if job["meshes"].get(fmt)]
    if job["meshes"].get("glb"):
        links.append(f'<a class="preview" href="{PAGE_NAME}#asset-{_u(str(job["id"]))}">3D view</a>')
    if job.get("video"):
        links.append(f'<a class="video" href="{_u(job["video"])}">video</a>')
    for label, key in (("log", "log"), ("config", "config_file")):
        if job.get(key):
            links.append(f'<a class="aux" href="{_u(job[key])}">{label}</a>')
    if links:
        parts.append('<nav class="files">' + "".join(links) + "</nav>")
    if status == "failed" and job.get("error"):
        outcome = f"[{job['outcome']}] " if job.get("outcome") else ""
        parts.append(f'<pre class="error">{_e(outcome + job["error"])}</pre>')
    parts.append("</div></article>")
    return "".join(parts)


def render_html(summary: Dict[str, Any]) -> str:
    """The gallery page for a summary (see :func:`build_summary`)."""
    counts = summary["counts"]
    jobs = summary["jobs"]
    stats = (f'<b>{len(jobs)}</b> jobs &middot; <b>{counts.get("done", 0)}</b> done &middot; '
             f'<b>{counts.get("failed", 0)}</b> failed &middot; '
             f'<b>{counts.get("pending", 0) + counts.get("running", 0)}</b> not finished &middot; '
             f'compute {format_seconds(summary["total_seconds"])}'
             + (f' &middot; wall {format_seconds(summary["wall_seconds"])}' if summary.get("wall_seconds") else "")
             + f' &middot; updated {_e(summary["generated"])}')
    filters = "".join(
        f'<button data-filter="{f}"{" class=on" if f == "all" else ""}>{f}</button>'
        for f in ("all", "done", "failed", "pending"))
    failed = [j for j in jobs if j["status"] == "failed"]
    failed_html = ""
    if failed:
        items = "".join(f'<li><a href="#job-{_e(j["id"])}">{_e(j["id"])}</a>: {_e((j.get("error") or "").splitlines()[0] if j.get("error") else "")}</li>'
                        for j in failed)
        failed_html = f'<section class="failed"><h2>{len(failed)} failed</h2><ul>{items}</ul></section>'
    cards = "\n".join(_card(j) for j in jobs)
    title = _e(f"batch {summary['batch']}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{title}</title><style>{CSS}</style></head><body>"
        f'<header class="top"><h1>{title}</h1><div class="stats">{stats}</div></header>'
        f'<nav class="filters">{filters}</nav>{failed_html}'
        f'<main class="grid">\n{cards}\n</main>'
        '<footer>Files: <a href="summary.json">summary.json</a> &middot; <a href="state.json">state.json</a>'
        "</footer>"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_gallery(state: BatchState) -> Tuple[Path, Path]:
    """Write ``index.html`` and ``summary.json`` into the batch folder (atomically)."""
    summary = build_summary(state)
    index = state.batch_dir / "index.html"
    summary_path = state.batch_dir / "summary.json"
    atomic_write_text(summary_path, json.dumps(summary, indent=1) + "\n")
    atomic_write_text(index, render_html(summary))
    write_batch_preview(state.batch_dir, summary["jobs"], f"batch {summary['batch']}: 3D preview")
    return index, summary_path
