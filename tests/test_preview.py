"""The 3D preview page (``preview.html``), ``--serve``, and model-viewer in headless Chromium.

The browser test serves a folder with two GLBs over 127.0.0.1, lets Chromium load the page and
reads back what model-viewer's ``load`` events recorded; it also checks the screenshot shows the
boxes' colour where the viewers are. It skips when Chromium or the pinned model-viewer is missing.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser import chromium, render_page
from conftest import REPO_ROOT
from test_gallery import _parse, assert_links_resolve
from threestudio_like.errors import UserInputError
from threestudio_like.preview import assets
from threestudio_like.preview.page import (PAGE_NAME, PreviewAsset, asset_from_outputs, export_files,
                                           write_preview, write_run_preview)
from threestudio_like.preview.serve import make_server, serve_in_thread
from threestudio_like.run_status import RunStatus

BOX_RGB = (220, 90, 30)
"""Orange: the boxes in the browser test (the turntable frames are blue, so they cannot pass for it)."""


@pytest.fixture
def no_viewer(tmp_path, monkeypatch):
    """An empty npm cache: model-viewer and the validator are 'not installed'."""
    monkeypatch.setenv(assets.ENV_WEB_DIR, str(tmp_path / "empty-web"))


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _fake_trial(root: Path) -> Path:
    trial = root / "demo" / "trial@1"
    export = trial / "save" / "it4-export"
    for name in ("model.ply", "model.usdz", "texture_kd.png", "model.mtl", "model.obj", "model.glb", "notes.txt"):
        _touch(export / name)
    _touch(trial / "save" / "it4-test.mp4")
    _touch(trial / "save" / "it4-test" / "0.png")
    return trial


def test_asset_from_outputs_links_every_exported_file(tmp_path):
    trial = _fake_trial(tmp_path)
    outputs = {"video": "save/it4-test.mp4", "turntable_frames": "save/it4-test",
               "meshes": {"glb": "save/it4-export/model.glb", "obj": "save/it4-export/model.obj",
                          "ply": "save/it4-export/gone.ply"}}
    asset = asset_from_outputs("trial@1", trial, outputs, trial / "save")
    assert asset.glb == "it4-export/model.glb" and asset.video == "it4-test.mp4" and asset.poster == "it4-test/0.png"
    # recorded meshes plus what lies beside them, by format; other files and missing ones left out
    assert asset.files == [f"it4-export/{n}" for n in
                           ("model.glb", "model.obj", "model.mtl", "texture_kd.png", "model.ply", "model.usdz")]
    assert export_files([]) == []
    empty = asset_from_outputs("x", trial, {"validation": "save/it4-test/0.png"}, trial / "save")
    assert (empty.glb, empty.video, empty.files) == (None, None, [])


def test_page_is_relative_escaped_and_says_how_to_get_the_viewer(tmp_path, no_viewer):
    trial = _fake_trial(tmp_path)
    save = trial / "save"
    evil = PreviewAsset(name='a <b>"bold"</b> cat', glb="it4-export/model.glb", video="it4-test.mp4",
                        poster="it4-test/0.png", files=["it4-export/model.glb", "it4-export/model.usdz"],
                        caption="<script>alert(1)</script>")
    page = write_preview(save, [evil, PreviewAsset(name="video only", video="it4-test.mp4")], "t")
    text = page.read_text()
    doc = _parse(text)
    assert page == save / PAGE_NAME and not (save / assets.VIEWER_DIR).exists()
    assert "<script>alert(1)</script>" not in text and "&lt;b&gt;&quot;bold&quot;&lt;/b&gt;" in text
    # the viewer is referenced where it would be copied, never from the network
    assert [s.get("src") for s in doc.of("script") if s.get("src")] == [assets.VIEWER_SCRIPT]
    assert "http://" not in text and "https://" not in text
    viewers = doc.of("model-viewer")
    assert len(viewers) == 1 and viewers[0]["src"] == "it4-export/model.glb"
    assert viewers[0]["ios-src"] == "it4-export/model.usdz" and viewers[0]["loading"] == "eager"
    assert len(doc.of("video")) == 2
    # not installed: the note is shown at once, and names the command that installs it
    note = next(a for t, a in doc.tags if a.get("id") == "note-viewer")
    assert "hidden" not in note and "make preview-assets" in text
    assert "python launch.py --serve" in text
    with pytest.raises(AssertionError, match=f"broken link: {assets.VIEWER_SCRIPT}"):
        assert_links_resolve(save, doc)  # the script is referenced where --serve would copy it
    _touch(save / assets.VIEWER_SCRIPT)
    assert assert_links_resolve(save, doc) == 8  # script, 2 videos, viewer and posters, 2 files
    os.remove(save / "it4-export" / "model.usdz")
    with pytest.raises(AssertionError, match="broken link: it4-export/model.usdz"):
        assert_links_resolve(save, doc)


def test_run_preview_is_written_and_recorded(tmp_path, no_viewer, capsys):
    trial = _fake_trial(tmp_path)
    status = RunStatus(trial / "status.json", "train")
    status.add_output("video", trial / "save" / "it4-test.mp4")
    status.add_output("meshes", trial / "save" / "it4-export" / "model.glb", key="glb")
    page = write_run_preview(trial, status)
    assert page == trial / "save" / PAGE_NAME and page.is_file()
    assert json.loads((trial / "status.json").read_text())["outputs"]["preview"] == "save/preview.html"
    out = capsys.readouterr()
    assert f"python launch.py --serve {trial / 'save'}" in out.out and "make preview-assets" in out.out
    bare = RunStatus(tmp_path / "other" / "status.json", "train")  # nothing to show: no page
    assert write_run_preview(tmp_path / "other", bare) is None and not (tmp_path / "other" / "save").exists()


def test_copy_model_viewer_keeps_the_licences(tmp_path):
    if assets.model_viewer_script() is None:
        pytest.skip(f"model-viewer is not installed: {assets.INSTALL_HINT}")
    assert assets.copy_model_viewer(tmp_path) == assets.VIEWER_SCRIPT
    folder = tmp_path / assets.VIEWER_DIR
    assert (tmp_path / assets.VIEWER_SCRIPT).stat().st_size > 500_000
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "MIT" in (folder / "LICENSE.three").read_text() and "BSD" in (folder / "LICENSE.lit").read_text()
    version = assets.pinned_versions()[assets.MODEL_VIEWER]
    assert f"{assets.MODEL_VIEWER} {version}" in (folder / "README.txt").read_text()


def test_install_names_the_problem_without_npm(monkeypatch, tmp_path, no_viewer):
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    with pytest.raises(assets.WebAssetsError, match="apt-get install nodejs npm"):
        assets.install_web_assets()


# ------------------------------------------------------------------------------------------
# --serve


def test_server_serves_assets_on_loopback_only(tmp_path):
    _touch(tmp_path / "a b" / "model.glb", b"glTF-bytes")
    server, url = serve_in_thread(str(tmp_path))
    try:
        assert server.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "a%20b/model.glb", timeout=10) as r:
            assert r.read() == b"glTF-bytes" and r.headers["Content-Type"] == "model/gltf-binary"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "missing.glb", timeout=10)
        port = server.server_address[1]
        with pytest.raises(UserInputError, match=f"port {port} is already in use.*--port {port + 1}"):
            make_server(str(tmp_path), port)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(UserInputError, match="is not a folder"):
        make_server(str(tmp_path / "nope"))


def test_serve_command_prints_the_address_and_stops_on_ctrl_c(tmp_path, no_viewer):
    _touch(tmp_path / "save" / PAGE_NAME, b"<html></html>")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    proc = subprocess.Popen([sys.executable, "launch.py", "--serve", str(tmp_path), "--port", "0"], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", "".join(lines)).group(1)
        assert f"  preview: {url}save/{PAGE_NAME}\n" in lines
        assert "the 3D viewer is not installed" in lines[0]
        with urllib.request.urlopen(f"{url}save/{PAGE_NAME}", timeout=10) as r:
            assert r.read() == b"<html></html>"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Stopped." in out and "Traceback" not in err


def test_serve_help_and_bad_folder():
    run = [sys.executable, "launch.py"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    helped = subprocess.run(run + ["--help"], check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "--serve" in helped.stdout and "--validate-gltf" in helped.stdout
    for tool in ("--serve", "--preview-assets", "--validate-gltf"):
        own = subprocess.run(run + [tool, "--help"], check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        assert own.returncode == 0 and f"launch.py {tool}" in own.stdout, own.stderr
    bad = subprocess.run(run + ["--serve", "no/such/folder"], check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "error: --serve: no/such/folder is not a folder" in bad.stderr


# ------------------------------------------------------------------------------------------
# headless Chromium


def _preview_folder(root: Path) -> Path:
    """Two coloured boxes (GLB via trimesh) and a turntable, with the page and model-viewer."""
    import trimesh

    from threestudio_like.utils.saving import save_image, save_video

    frames = []
    for k in range(4):
        img = np.zeros((32, 32, 3), np.float32)
        img[..., 2] = 0.4 + 0.1 * k
        frames.append(save_image(root / "spin" / f"{k}.png", img))
    save_video(root / "spin.mp4", frames, fps=4)
    made = []
    for name, extents in (("wide", (1.0, 0.5, 0.5)), ("tall", (0.4, 1.0, 0.4))):
        box = trimesh.creation.box(extents=extents)
        box.visual.vertex_colors = np.tile([*BOX_RGB, 255], (len(box.vertices), 1))
        (root / name).mkdir(parents=True)
        box.export(root / name / "model.glb")
        box.export(root / name / "model.ply")
        made.append(PreviewAsset(name=name, glb=f"{name}/model.glb", video="spin.mp4", poster="spin/0.png",
                                 files=[f"{name}/model.glb", f"{name}/model.ply"]))
    write_preview(root, made, "preview test")
    return root


def _orange_share(png: Path, box: tuple) -> float:
    """Share of pixels in ``box`` (x0, y0, x1, y1) whose hue is the boxes' orange."""
    import imageio.v2 as imageio

    img = imageio.imread(png)[box[1]:box[3], box[0]:box[2], :3].astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return float(((r > g + 50) & (g > b + 20)).mean())


@pytest.mark.skipif(not chromium(), reason="chromium is not on PATH (Debian: apt-get install chromium)")
def test_model_viewer_loads_every_model_in_headless_chromium(tmp_path):
    if assets.model_viewer_script() is None:
        pytest.skip(f"model-viewer is not installed: {assets.INSTALL_HINT}")
    folder = _preview_folder(tmp_path / "site")
    server, url = serve_in_thread(str(folder))
    try:
        dom, shot = render_page(url + PAGE_NAME, tmp_path / "preview.png", size="1000,1400", budget_ms=3000)
    finally:
        server.shutdown()
        server.server_close()
    body = next(a for t, a in _parse(dom).tags if t == "body")
    viewers = _parse(dom).of("model-viewer")
    assert [v.get("data-model") for v in viewers] == ["loaded", "loaded"], viewers
    assert (body["data-models-loaded"], body["data-models-failed"], body["data-models-total"]) == ("2", "0", "2")
    assert body["data-viewer"] == "ok"
    # the first asset's viewer sits left of its turntable: orange there, none in the (blue) video
    assert _orange_share(shot, (40, 150, 470, 560)) > 0.05
    assert _orange_share(shot, (530, 150, 960, 560)) < 0.001
    # from disk, the page says why the models cannot load, and what to run instead
    disk_dom, _ = render_page(folder / PAGE_NAME, None, budget_ms=3000)
    note = next(a for t, a in _parse(disk_dom).tags if a.get("id") == "note-file")
    assert "hidden" not in note
    assert next(a for t, a in _parse(disk_dom).tags if t == "body")["data-models-loaded"] == "0"
