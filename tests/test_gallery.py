"""The morning-review gallery: a static, self-contained ``index.html`` with relative links only,
checked as HTML and in headless Chromium (skipped when ``chromium`` is not installed)."""
from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, List, Tuple
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from browser import chromium, render_page
from threestudio_like.batch.gallery import collect_result, format_seconds, render_html, write_gallery
from threestudio_like.batch.state import BatchState, new_job_record

EVIL_PROMPT = 'a <script>alert("x")</script> & "quoted" corgi'


class _Collector(HTMLParser):
    """Tags with their attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: List[Tuple[str, Dict[str, Any]]] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Any]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def of(self, tag: str, cls: str = "") -> List[Dict[str, Any]]:
        return [a for t, a in self.tags if t == tag and (not cls or cls in (a.get("class") or "").split())]


def _parse(text: str) -> _Collector:
    parser = _Collector()
    parser.feed(text)
    return parser


def _links(doc: _Collector) -> List[str]:
    out = []
    for tag, attrs in doc.tags:
        for key in ("href", "src", "poster"):
            if attrs.get(key):
                out.append(attrs[key])
    return out


def assert_links_resolve(batch_dir: Path, doc: _Collector) -> int:
    """Every link is relative (no scheme, no absolute path) and names an existing file."""
    count = 0
    for link in _links(doc):
        if link.startswith("#"):
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), f"not relative: {link}"
        target = batch_dir / unquote(parsed.path)
        assert target.is_file(), f"broken link: {link}"
        count += 1
    return count



def check_gallery_in_chromium(batch_dir: Path, n_cards: int, n_videos: int) -> Path:
    """Open ``index.html`` in headless Chromium: one card per job, every video and image loaded
    by the browser, every link (meshes included) resolving; returns a screenshot."""
    dom, shot = render_page(batch_dir / "index.html", batch_dir / "screenshot.png", size="1280,1500")
    doc = _parse(dom)
    cards = doc.of("article", "card")
    assert len(cards) == n_cards, f"{len(cards)} cards in the rendered page"
    videos = doc.of("video")
    assert len(videos) == n_videos
    media = videos + doc.of("img")
    broken = [m.get("src") for m in media if m.get("data-media") != "ok"]
    assert not broken, f"the browser could not load: {broken}"
    models = [a["href"] for a in doc.of("a", "model")]
    assert len(models) >= n_videos
    assert all(m.rsplit(".", 1)[-1] in ("glb", "obj", "ply", "usdz") for m in models)
    assert_links_resolve(batch_dir, doc)
    assert shot.is_file() and shot.stat().st_size > 1000
    return shot


@pytest.fixture
def synthetic_batch(tmp_path) -> Path:
    """A batch folder with real media: one done job, one failed, one pending."""
    import trimesh

    from threestudio_like.utils.saving import save_image, save_video

    batch = tmp_path / "batch"
    trial = batch / "trials" / "corgi"
    frames = []
    for k in range(6):
        img = np.zeros((32, 32, 3), np.float32)
        img[..., 0] = k / 5
        img[8:24, 8 + k:20 + k, 1] = 1.0
        frames.append(save_image(trial / "save" / "it600-test" / f"{k}.png", img))
    save_video(trial / "save" / "it600-test.mp4", frames, fps=6)
    export = trial / "save" / "it600-export"
    export.mkdir(parents=True)
    box = trimesh.creation.box()
    for fmt in ("glb", "obj", "ply"):
        box.export(export / f"model.{fmt}")
    (trial / "logs" / "csv").mkdir(parents=True)
    (trial / "logs" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/grad_norm,train/loss\n0,598,1.0,0.5\n0,599,1.0,\n0,599,,0.125\n")
    failed_trial = batch / "trials" / "broken"
    save_image(failed_trial / "save" / "it200-0.png", np.ones((16, 48, 3), np.float32) * 0.5)

    state = BatchState(batch)
    state.data["batch"] = "synthetic"
    specs = [("corgi", "done", EVIL_PROMPT), ("broken", "failed", "a <broken> teapot"), ("later", "pending", "a cat")]
    for i, (job_id, status, prompt) in enumerate(specs, start=1):
        rec = new_job_record(job_id, i)
        rec.update(status=status, spec={"prompt": prompt, "config": "mvdream-sd21.yaml", "seed": i,
                                        "overrides": ["trainer.max_steps=600"]},
                   trial_dir=f"trials/{job_id}", config_file=f"configs/{job_id}.yaml", log=f"logs/{job_id}.log")
        for rel in (rec["config_file"], rec["log"]):
            (batch / rel).parent.mkdir(parents=True, exist_ok=True)
            (batch / rel).write_text("x\n")
        if status != "pending":
            rec["seconds"] = 3725.0 if status == "done" else 61.0
            rec["attempts"] = [{"n": 1, "outcome": "ok" if status == "done" else "oom"}]
            rec["result"] = collect_result(batch, rec["trial_dir"])
        if status == "failed":
            rec["error"] = "torch.OutOfMemoryError: CUDA out of memory <at> step 200"
        state.jobs[job_id] = rec
        state.data["order"].append(job_id)
    state.save()
    write_gallery(state)
    return batch


def test_collect_result_finds_outputs(synthetic_batch):
    result = collect_result(synthetic_batch, "trials/corgi")
    assert result == {
        "video": "trials/corgi/save/it600-test.mp4",
        "thumbnail": "trials/corgi/save/it600-test/0.png",
        "meshes": {"glb": "trials/corgi/save/it600-export/model.glb",
                   "obj": "trials/corgi/save/it600-export/model.obj",
                   "ply": "trials/corgi/save/it600-export/model.ply"},
        "final_loss": 0.125,
        "steps": 600,
    }
    partial = collect_result(synthetic_batch, "trials/broken")
    assert partial["thumbnail"] == "trials/broken/save/it200-0.png" and partial["video"] is None


def test_collect_result_reads_status_json(tmp_path):
    """With a status.json, outputs come from what the run recorded (whatever their names),
    listed only while the file exists; steps and the final loss are the status's."""
    batch = tmp_path / "batch"
    trial = batch / "trials" / "teapot"
    files = ("renders/spin.mp4", "renders/spin/0.png", "renders/val.png", "out/asset.glb", "out/asset.obj")
    for rel in files:
        (trial / rel).parent.mkdir(parents=True, exist_ok=True)
        (trial / rel).write_bytes(b"x")
    (trial / "save" / "it999-test.mp4").parent.mkdir(parents=True)
    (trial / "save" / "it999-test.mp4").write_bytes(b"x")           # a file the run did not record
    status = {"version": 1, "state": "finished", "step": 321, "loss": 0.5,
              "outputs": {"video": "renders/spin.mp4", "turntable_frames": "renders/spin",
                          "validation": "renders/val.png", "checkpoint": "ckpts/last.ckpt",
                          "meshes": {"glb": "out/asset.glb", "obj": "out/asset.obj", "ply": "out/gone.ply"}}}
    (trial / "status.json").write_text(json.dumps(status))
    assert collect_result(batch, "trials/teapot") == {
        "video": "trials/teapot/renders/spin.mp4",
        "thumbnail": "trials/teapot/renders/spin/0.png",
        "meshes": {"glb": "trials/teapot/out/asset.glb", "obj": "trials/teapot/out/asset.obj"},
        "final_loss": 0.5,
        "steps": 321,
    }
    # no turntable yet: the last validation image; a NaN loss is left out (JSON has no NaN)
    status.update(loss=float("nan"), outputs={"validation": "renders/val.png"})
    (trial / "status.json").write_text(json.dumps(status))
    result = collect_result(batch, "trials/teapot")
    assert result["thumbnail"] == "trials/teapot/renders/val.png"
    assert result["video"] is None and result["meshes"] == {} and result["final_loss"] is None


def test_gallery_is_static_relative_and_escaped(synthetic_batch):
    page = (synthetic_batch / "index.html").read_text()
    doc = _parse(page)
    cards = doc.of("article", "card")
    assert [(c["data-job"], c["data-status"]) for c in cards] == [
        ("corgi", "done"), ("broken", "failed"), ("later", "pending")]
    assert assert_links_resolve(synthetic_batch, doc) >= 10
    # no network: no external scripts, styles, fonts or images
    assert "http://" not in page and "https://" not in page and "//" not in "".join(_links(doc))
    assert not [s for s in doc.of("script") if s.get("src")] and not doc.of("link")
    # user text is escaped, never markup
    assert '<script>alert("x")</script>' not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot; corgi" in page
    assert "CUDA out of memory &lt;at&gt; step 200" in page
    assert [a["href"] for a in doc.of("a", "model")] == [
        "trials/corgi/save/it600-export/model.glb", "trials/corgi/save/it600-export/model.obj",
        "trials/corgi/save/it600-export/model.ply"]
    assert "1h02m" in page and "0.125" in page
    summary = json.loads((synthetic_batch / "summary.json").read_text())
    assert summary["counts"] == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    corgi = summary["jobs"][0]
    assert corgi["prompt"] == EVIL_PROMPT and corgi["final_loss"] == 0.125 and corgi["seed"] == 1
    assert corgi["video"] == "trials/corgi/save/it600-test.mp4"
    assert summary["jobs"][1]["error"].startswith("torch.OutOfMemoryError")


def test_format_seconds():
    assert [format_seconds(s) for s in (None, 4.25, 185, 7620)] == ["-", "4.2s", "3m05s", "2h07m"]


def test_empty_batch_renders():
    page = render_html({"batch": "x", "counts": {}, "jobs": [], "total_seconds": 0, "generated": "now"})
    assert "<main" in page and "card" not in page.split("<main", 1)[1].split("</main>")[0]


def test_gallery_links_the_batch_preview(synthetic_batch):
    """The gallery writes ``preview.html`` beside it (every asset in 3D) and links each GLB's view."""
    index = _parse((synthetic_batch / "index.html").read_text())
    assert [a["href"] for a in index.of("a", "preview")] == ["preview.html#asset-corgi"]
    preview = _parse((synthetic_batch / "preview.html").read_text())
    assert [a["data-asset"] for a in preview.of("article", "asset")] == ["corgi"]
    (viewer,) = preview.of("model-viewer")
    assert viewer["src"] == "trials/corgi/save/it600-export/model.glb"
    assert assert_links_resolve(synthetic_batch, preview) >= 5


@pytest.mark.skipif(not chromium(), reason="chromium is not on PATH (Debian: apt-get install chromium)")
def test_gallery_in_headless_chromium(synthetic_batch):
    check_gallery_in_chromium(synthetic_batch, n_cards=3, n_videos=1)
