"""The Janus runner on a 2-config x 2-seed tiny suite: report written, every image present, resumable."""
from __future__ import annotations

import json
import os
from html.parser import HTMLParser

from threestudio_like.janus.report import run_bench

TINY = [
    "system.guidance.pretrained_model_name_or_path=tiny-random", "system.guidance.image_size=64",
    "data.height=16", "data.width=16", "data.eval_height=32", "data.eval_width=32", "data.n_val_views=1",
    "system.renderer.num_samples_per_ray=16", "system.geometry.pos_encoding_config.n_levels=4",
    "system.geometry.pos_encoding_config.log2_hashmap_size=10", "system.geometry.isosurface_resolution=16",
    "system.geometry.isosurface_threshold=auto", "trainer.max_steps=2", "trainer.val_check_interval=2",
    "checkpoint.every_n_train_steps=2", "trainer.precision=32",
]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self.tables += tag == "table"


def test_tiny_report(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = os.path.join(root, "configs", "dreamfusion-sd21.yaml")
    perp = tmp_path / "dreamfusion-sd21-perpneg.yaml"
    perp.write_text(open(base).read().replace("use_perp_neg: false", "use_perp_neg: true"))
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps([{"prompt": "a corgi", "kind": "janus-prone"}]))
    out = tmp_path / "report"
    r = run_bench(str(suite), [base, str(perp)], [0, 1], str(out), TINY, n_views=8)
    assert len(r["assets"]) == 4 and set(r["summary"]) == {"dreamfusion-sd21", "dreamfusion-sd21-perpneg"}
    page = _Images()
    page.feed((out / "index.html").read_text())
    assert page.tables >= 2 and len(page.srcs) >= 4
    for src in page.srcs:
        assert (out / src).is_file(), src
    assert "dreamfusion-sd21-perpneg" in (out / "report.md").read_text()
    mtimes = {p: os.path.getmtime(p) for p in out.glob("runs/*/*/*/metrics.json")}
    run_bench(str(suite), [base, str(perp)], [0, 1], str(out), TINY, n_views=8)  # resumes: nothing recomputed
    assert all(os.path.getmtime(p) == t for p, t in mtimes.items())
