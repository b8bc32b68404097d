"""``preview.html``: every asset of a run or a batch in an interactive 3D viewer, turntable beside it.

One static page per folder (a run's ``save/``, a batch folder) with relative links only. Each
asset is a ``<model-viewer>`` element on its GLB (orbit with the mouse; ``ios-src`` points at the
USDZ for Apple AR when there is one), its turntable video, and links to every exported file
(glb, obj, mtl, png, ply, usdz) found beside the recorded meshes. model-viewer is copied next to
the page from the pinned npm install (:mod:`.assets`), never loaded from the network.

Browsers refuse ``fetch`` of a GLB from ``file://``, so the page says so when opened from disk
and names the fix (``python launch.py --serve <folder>``); without the viewer script it says how
to install it, and the turntables and links still work. An inline script records what the
browser did, for people and tests alike: every ``<model-viewer>`` gets ``data-model="loaded"``
on its ``load`` event (``"error"`` and a visible notice on ``error``), and ``<body>`` carries
``data-models-loaded``, ``data-models-failed`` and ``data-models-total``.
"""
from __future__ import annotations

import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union
from urllib.parse import quote

from threestudio_like.preview.assets import INSTALL_HINT, VIEWER_SCRIPT, copy_model_viewer
from threestudio_like.utils.files import atomic_write_text

PAGE_NAME = "preview.html"
EXPORT_FORMATS = ("glb", "obj", "mtl", "png", "ply", "usdz")
"""Exported files linked from the page, in this order."""


@dataclass
class PreviewAsset:
    """One asset on the page; paths are relative to the page's folder."""

    name: str
    """Heading and anchor (``#asset-<name>``)."""
    glb: Optional[str] = None
    """The GLB shown in the 3D viewer."""
    video: Optional[str] = None
    """The turntable video."""
    poster: Optional[str] = None
    """A still shown while the model or video loads (the turntable's front frame)."""
    files: List[str] = field(default_factory=list)
    """Every exported file to link, in :data:`EXPORT_FORMATS` order."""
    caption: str = ""
    """The prompt or input image, shown under the heading."""


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def export_files(meshes: Iterable[Union[str, Path]]) -> List[Path]:
    """The recorded mesh files plus the exported files beside them (an OBJ's MTL and texture,
    a USDZ ...), existing ones only, ordered by :data:`EXPORT_FORMATS` then name."""
    found = {Path(m) for m in meshes if Path(m).is_file()}
    for folder in {m.parent for m in found}:
        found.update(p for p in folder.iterdir() if p.is_file() and p.suffix[1:].lower() in EXPORT_FORMATS)
    return sorted(found, key=lambda p: (EXPORT_FORMATS.index(p.suffix[1:].lower()), p.name)
                  if p.suffix[1:].lower() in EXPORT_FORMATS else (len(EXPORT_FORMATS), p.name))


def asset_from_outputs(name: str, base: Union[str, Path], outputs: Dict[str, Any], page_dir: Union[str, Path],
                       caption: str = "") -> PreviewAsset:
    """A :class:`PreviewAsset` from recorded outputs (paths relative to ``base``): the keys of a
    run's ``status.json`` (``video``/``gif``, ``turntable_frames``, ``meshes`` by format) or of
    a gallery job (``video``, ``thumbnail``, ``meshes``). Files that do not exist are left out."""
    base, page_dir = Path(base), Path(page_dir)

    def existing(rel: Any) -> Optional[Path]:
        return base / rel if isinstance(rel, str) and rel and (base / rel).is_file() else None

    meshes = outputs.get("meshes") if isinstance(outputs.get("meshes"), dict) else {}
    files = export_files(p for p in (existing(v) for v in meshes.values()) if p is not None)
    glb = next((f for f in files if f.suffix.lower() == ".glb"), None)
    video = existing(outputs.get("video")) or existing(outputs.get("gif"))
    frames = outputs.get("turntable_frames")
    poster = existing(outputs.get("thumbnail")) or (existing(f"{frames}/0.png") if isinstance(frames, str) else None)
    return PreviewAsset(
        name=name,
        glb=_rel(glb, page_dir) if glb else None,
        video=_rel(video, page_dir) if video else None,
        poster=_rel(poster, page_dir) if poster else None,
        files=[_rel(f, page_dir) for f in files],
        caption=caption,
    )


# ------------------------------------------------------------------------------------------
# HTML

CSS = """
:root{--bg:#f4f4f1;--card:#fff;--ink:#1d1d1b;--mute:#6b6b66;--bad:#c0392b;--ok:#23824a;--line:#ddddd6}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header{padding:18px 24px 6px}h1{margin:0 0 4px;font-size:22px}.sub{color:var(--mute)}
.note{margin:8px 24px;padding:8px 12px;border-left:4px solid var(--bad);background:#fff5f3}.note code{font-size:13px}
main{display:flex;flex-direction:column;gap:16px;padding:12px 24px 32px}
.asset{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.asset h2{margin:0;font-size:16px;word-break:break-all}.caption{margin:4px 0 8px;font-style:italic}
.views{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:12px}
.view{background:#e9e9e4;aspect-ratio:1/1;display:flex;align-items:center;justify-content:center;position:relative}
model-viewer{width:100%;height:100%;--poster-color:transparent}.view video{width:100%;height:100%;object-fit:contain}
.view .label{position:absolute;left:8px;top:6px;color:var(--mute);font-size:12px}.placeholder{color:var(--mute)}
.model-error{color:var(--bad);font-size:12px;margin-top:4px}
.files a{display:inline-block;margin:8px 6px 0 0;padding:2px 9px;border:1px solid var(--line);border-radius:4px;text-decoration:none;color:var(--ink)}
.files a.glb{border-color:var(--ok);color:var(--ok);font-weight:600}footer{color:var(--mute);padding:0 24px 24px}
"""

SCRIPT = """
(function(){
  var body=document.body, viewers=document.querySelectorAll('model-viewer');
  var loaded=0, failed=0;
  body.dataset.modelsTotal=viewers.length; body.dataset.modelsLoaded=0; body.dataset.modelsFailed=0;
  function show(id){ var n=document.getElementById(id); if(n){ n.hidden=false; } }
  if(location.protocol==='file:' && viewers.length){ show('note-file'); }
  viewers.forEach(function(mv){
    mv.addEventListener('load', function(){
      if(mv.dataset.model!=='loaded'){ loaded++; } mv.dataset.model='loaded'; body.dataset.modelsLoaded=loaded;
    });
    mv.addEventListener('error', function(ev){
      if(mv.dataset.model==='error'){ return; }
      failed++; mv.dataset.model='error'; body.dataset.modelsFailed=failed;
      var n=document.createElement('div'); n.className='model-error';
      n.textContent='could not load '+mv.getAttribute('src')+(ev.detail&&ev.detail.type?' ('+ev.detail.type+')':'');
      mv.closest('.view').insertAdjacentElement('afterend', n);
    });
  });
  window.addEventListener('load', function(){
    var defined=!!(window.customElements&&customElements.get('model-viewer'));
    body.dataset.viewer=defined?'ok':'missing';
    if(!defined && viewers.length){ show('note-viewer'); }
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _u(rel: str) -> str:
    """A relative URL for a path inside the page's folder."""
    return quote(rel, safe="/._-~")


def _asset_html(asset: PreviewAsset) -> str:
    poster = f' poster="{_u(asset.poster)}"' if asset.poster else ""
    parts = [f'<article class="asset" id="asset-{_e(asset.name)}" data-asset="{_e(asset.name)}">',
             f"<h2>{_e(asset.name)}</h2>"]
    if asset.caption:
        parts.append(f'<p class="caption">{_e(asset.caption)}</p>')
    parts.append('<div class="views">')
    if asset.glb:
        usdz = next((f for f in asset.files if f.lower().endswith(".usdz")), None)
        ar = f' ios-src="{_u(usdz)}" ar ar-modes="webxr scene-viewer quick-look"' if usdz else ""
        parts.append(f'<div class="view"><model-viewer src="{_u(asset.glb)}"{poster}{ar} camera-controls '
                     f'auto-rotate loading="eager" reveal="auto" shadow-intensity="1" interaction-prompt="none" '
                     f'alt="3D model of {_e(asset.name)}"></model-viewer><span class="label">3D (drag to orbit)</span></div>')
    else:
        parts.append('<div class="view"><span class="placeholder">no GLB exported</span></div>')
    if asset.video:
        parts.append(f'<div class="view"><video src="{_u(asset.video)}"{poster} muted loop autoplay playsinline '
                     f'controls preload="auto" title="turntable of {_e(asset.name)}"></video>'
                     '<span class="label">turntable</span></div>')
    else:
        parts.append('<div class="view"><span class="placeholder">no turntable video</span></div>')
    parts.append("</div>")
    if asset.files:
        links = "".join(f'<a class="{_e(Path(f).suffix[1:].lower())}" href="{_u(f)}" download>{_e(Path(f).name)}</a>'
                        for f in asset.files)
        parts.append(f'<nav class="files">{links}</nav>')
    parts.append("</article>")
    return "".join(parts)


def render_preview(assets: List[PreviewAsset], title: str, viewer: Optional[str], folder_hint: str = "<folder>") -> str:
    """The page for ``assets``. ``viewer``: the model-viewer script relative to the page, None
    when it is not installed (the page says how to get it). ``folder_hint``: the folder to name
    in the ``--serve`` advice."""
    serve = f"python launch.py --serve {folder_hint}"
    notes = [
        (f'<p class="note" id="note-file" hidden>Opened from disk: browsers block loading 3D models from '
        f'<code>file://</code>. Serve this folder instead: <code>{_e(serve)}</code> and open the address it prints.</p>'),
        (f'<p class="note" id="note-viewer"{" hidden" if viewer else ""}>The 3D viewer (model-viewer) is not installed '
        f'next to this page: {_e(INSTALL_HINT)}, then <code>{_e(serve)}</code> copies it here. Turntables and '
        f"downloads work without it.</p>"),
    ]
    script = f'<script src="{_u(viewer or VIEWER_SCRIPT)}"></script>'
    n_models = sum(1 for a in assets if a.glb)
    body = "\n".join(_asset_html(a) for a in assets) or '<p class="placeholder">No exported assets yet.</p>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{CSS}</style>{script}</head>"
        f'<body data-viewer-copied="{"yes" if viewer else "no"}">'
        f'<header><h1>{_e(title)}</h1><div class="sub">{len(assets)} assets &middot; {n_models} in 3D</div></header>'
        + "".join(notes)
        + f"<main>\n{body}\n</main>"
        + ('<footer>3D viewer: <a href="model-viewer/README.txt">@google/model-viewer</a> (Apache-2.0), '
           "copied next to this page.</footer>" if viewer else "")
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def write_preview(page_dir: Union[str, Path], assets: List[PreviewAsset], title: str,
                  folder_hint: Optional[str] = None) -> Path:
    """Copy model-viewer next to the page (when installed) and write ``preview.html`` atomically."""
    page_dir = Path(page_dir)
    viewer = copy_model_viewer(page_dir) if any(a.glb for a in assets) else None
    page = page_dir / PAGE_NAME
    atomic_write_text(page, render_preview(assets, title, viewer, folder_hint or str(page_dir)))
    return page


def write_batch_preview(batch_dir: Union[str, Path], jobs: List[Dict[str, Any]], title: str) -> Path:
    """``<batch>/preview.html``: every job of the gallery's summary (:func:`build_summary`) that
    has a mesh or a turntable, in job order."""
    assets = []
    for job in jobs:
        images = job.get("image") if isinstance(job.get("image"), list) else [job.get("image")]
        caption = job.get("prompt") or ", ".join(os.path.basename(i) for i in images if i)
        asset = asset_from_outputs(str(job["id"]), batch_dir, job, batch_dir, caption=caption or "")
        if asset.glb or asset.video or asset.files:
            assets.append(asset)
    return write_preview(batch_dir, assets, title)


def write_run_preview(trial_dir: Union[str, Path], status: Any) -> Optional[Path]:
    """The preview of one run, ``<trial>/save/preview.html``, from the outputs its status records
    (also recorded there as ``preview``). Written only when the run has a mesh or a turntable; a
    failure to write it is reported and never fails the run."""
    trial = Path(trial_dir)
    try:
        asset = asset_from_outputs(trial.name, trial, status.data.get("outputs") or {}, trial / "save")
        if not (asset.glb or asset.video or asset.files):
            return None
        page = write_preview(trial / "save", [asset], f"{trial.parent.name}/{trial.name}")
    except (OSError, ValueError) as exc:
        print(f"warning: the preview page was not written ({getattr(exc, 'strerror', None) or exc})", file=sys.stderr)
        return None
    status.add_output("preview", page)
    viewer = "" if (page.parent / VIEWER_SCRIPT).is_file() else f" (3D viewer not installed: {INSTALL_HINT})"
    print(f"Preview: {page}: python launch.py --serve {page.parent}{viewer}")
    return page
