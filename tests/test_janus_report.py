"""The Janus runner on a 2-config x 2-seed tiny suite: report written, its table lists every
config x metric, every image exists (HTML parse, always) and is shown by headless Chromium
(skipped without a browser); resumable."""
from __future__ import annotations

import json
import os
from html.parser import HTMLParser

import pytest

from browser import chromium, render_page
from threestudio_like.janus.report import MEAN_KEYS, RATE_KEYS, run_bench

# One training step, no validation, checkpoint, mesh or video: the turntable frames are all the
# report needs.
TINY = [
    "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
    "data.height=16", "data.width=16", "data.eval_height=32", "data.eval_width=32",
    "system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=10", "trainer.max_steps=1",
    "trainer.val_check_interval=100", "checkpoint.every_n_train_steps=100", "trainer.precision=32",
    "system.exporter_type=''", "system.test_formats=[]",
]
CONFIGS = ("dreamfusion-sd21", "dreamfusion-sd21-perpneg")


class _Page(HTMLParser):
    """Media sources (with their attributes) and the summary table's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.media, self.summary, self._table, self._cell = [], [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "video", "source") and attrs.get("src"):
            self.media.append(attrs)
        if tag == "table":
            self._table = attrs.get("class")
        if self._table == "summary" and tag == "tr":
            self.summary.append([])
        if self._table == "summary" and tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.summary[-1].append(self._cell.strip())
            self._cell = None
        if tag == "table":
            self._table = None


def check_report_page(out, summary) -> _Page:
    """Every image/video source exists; the summary table has a row per config and a filled cell
    per config x metric."""
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert len(page.media) >= 4 + 1  # a contact sheet per asset and charts
    for m in page.media:
        assert not os.path.isabs(m["src"]) and (out / m["src"]).is_file(), m["src"]
    header, *rows = page.summary
    metrics = [k for k in RATE_KEYS + MEAN_KEYS if any(k in s for s in summary.values())]
    assert header == ["config", *metrics] and {"face_arcs", "second_peak_ratio"} <= set(metrics)
    assert sorted(r[0] for r in rows) == sorted(CONFIGS)
    for r in rows:
        assert len(r) == len(header) and all(cell and cell != "—" for cell in r[1:]), r
    return page



@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("janus")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = os.path.join(root, "configs", "dreamfusion-sd21.yaml")
    perp = tmp / "dreamfusion-sd21-perpneg.yaml"
    perp.write_text(open(base).read().replace("use_perp_neg: false", "use_perp_neg: true"))
    suite = tmp / "suite.json"
    suite.write_text(json.dumps([{"prompt": "a corgi", "kind": "janus-prone"}]))
    out = tmp / "report"
    args = (str(suite), [base, str(perp)], [0, 1], str(out), TINY)
    result = run_bench(*args, n_views=6, in_process=True)
    return out, args, result


def test_tiny_report(tiny_report):
    out, args, r = tiny_report
    assert len(r["assets"]) == 4 and set(r["summary"]) == set(CONFIGS)
    assert {(a["config"], a["seed"]) for a in r["assets"]} == {(c, s) for c in CONFIGS for s in (0, 1)}
    check_report_page(out, r["summary"])
    assert "dreamfusion-sd21-perpneg" in (out / "report.md").read_text()
    mtimes = {p: os.path.getmtime(p) for p in out.glob("runs/*/*/*/metrics.json")}
    assert len(mtimes) == 4
    run_bench(*args, n_views=6, in_process=True)  # resumes: nothing recomputed
    assert all(os.path.getmtime(p) == t for p, t in mtimes.items())


def test_report_records_provenance_and_marks_test_weights(tiny_report):
    """Tiny-random weights are recorded per run and flagged on the page: such a report can never
    pass for a comparison of real priors. Results are also split per prompt kind."""
    out, _, r = tiny_report
    saved = json.loads((out / "summary.json").read_text())
    prov = saved["provenance"]
    assert prov["runs"] == 4 and prov["runs_without_real_weights"] == 4
    assert prov["seeds"] == [0, 1] and prov["code_version"] and prov["machine"]["torch"]
    assert "trainer.max_steps=1" in prov["overrides"]
    for a in saved["assets"]:
        run = a["provenance"]
        assert run["real_weights"] is False and run["max_steps"] == 1 and run["seed"] == a["seed"]
        assert run["weights"]["system.guidance.pretrained_model_name_or_path"] == {"id": "tiny-random", "kind": "test"}
    assert set(saved["summary_by_kind"]["dreamfusion-sd21"]) == {"janus-prone"}
    page = (out / "index.html").read_text()
    assert "class='warning'" in page and "4 of 4 runs used no real weights" in page
    assert "class='by-kind'" in page and "dreamfusion-sd21 / janus-prone" in page
    assert "4 of 4 runs used no real weights" in (out / "report.md").read_text()


@pytest.mark.skipif(not chromium(), reason="no chromium/chromium-browser/google-chrome on PATH")
def test_tiny_report_in_headless_chromium(tiny_report):
    out, _, r = tiny_report
    dom, shot = render_page(out / "index.html", out / "screenshot.png")
    page = _Page()
    page.feed(dom)
    images = [m for m in page.media if "src" in m]
    assert len(images) >= 5
    broken = [m["src"] for m in images if m.get("data-media") != "ok"]
    assert not broken, f"the browser could not show: {broken}"
    assert sorted(row[0] for row in page.summary[1:]) == sorted(CONFIGS)
    assert shot.is_file() and shot.stat().st_size > 1000


def test_weights_are_identified_without_reading_them_whole(tmp_path):
    from threestudio_like.janus.provenance import describe_weights, run_provenance

    folder = tmp_path / "my-mvdream"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"a" * 100)
    first = describe_weights(str(folder))
    assert first["kind"] == "local" and first["id"] == "my-mvdream" and len(first["fingerprint"]) == 16
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"b" * 100)
    assert describe_weights(str(folder))["fingerprint"] != first["fingerprint"]
    real = run_provenance({"seed": 3, "trainer": {"max_steps": 10000},
                           "system": {"guidance_type": "mvdream-multiview-diffusion-guidance",
                                      "guidance": {"pretrained_model_name_or_path": str(folder)}}})
    assert real["real_weights"] is True and real["seed"] == 3 and real["max_steps"] == 10000
    lab = run_provenance({"system": {"guidance_type": "reference-object-guidance", "guidance": {}}})
    assert lab["real_weights"] is False and lab["weights"] == {}
