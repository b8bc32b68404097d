"""Headless Chromium for the page tests (batch gallery, Janus report, 3D preview): DOM dump + screenshot."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union


def chromium() -> str:
    """The Chromium executable, or '' when none is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome") or ""


def render_page(html: Union[Path, str], screenshot: Optional[Path], size: str = "1280,1400",
                budget_ms: int = 10000) -> Tuple[str, Optional[Path]]:
    """Open ``html`` (a file, or an ``http://`` address) in headless Chromium (``budget_ms`` of
    virtual time for media to load; WebGL in software); returns the rendered DOM and the path of
    a screenshot of the page (None: no screenshot taken)."""
    exe = chromium()
    assert exe, "chromium is not installed"
    url = html if isinstance(html, str) and html.startswith("http") else Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="tsl-chromium-") as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
                "--enable-unsafe-swiftshader",
                f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        dump = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert dump.returncode == 0, dump.stderr[-2000:]
        if screenshot is None:
            return dump.stdout, None
        subprocess.run(base + ["--hide-scrollbars", f"--window-size={size}", f"--screenshot={screenshot}", url],
                       capture_output=True, text=True, timeout=180)
    return dump.stdout, Path(screenshot)
