"""Headless Chromium for the page tests (batch gallery, Janus report): DOM dump + screenshot."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Tuple


def chromium() -> str:
    """The Chromium executable, or '' when none is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome") or ""


def render_page(html: Path, screenshot: Path, size: str = "1280,1400") -> Tuple[str, Path]:
    """Open ``html`` in headless Chromium (10 s of virtual time for media to load); returns the
    rendered DOM and the path of a screenshot of the page."""
    exe = chromium()
    assert exe, "chromium is not installed"
    url = Path(html).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="tsl-chromium-") as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
                f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
        dump = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert dump.returncode == 0, dump.stderr[-2000:]
        subprocess.run(base + ["--hide-scrollbars", f"--window-size={size}", f"--screenshot={screenshot}", url],
                       capture_output=True, text=True, timeout=180)
    return dump.stdout, Path(screenshot)
