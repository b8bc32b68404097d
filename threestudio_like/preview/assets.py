"""The browser-side tools of the preview, from npm: ``@google/model-viewer`` and ``gltf-validator``.

Their versions are pinned in ``preview/npm/package.json`` and ``package-lock.json``, which ship
inside the Python package (so a pip-installed user has them too). :func:`install_web_assets`
(``python launch.py --preview-assets``, ``make preview-assets``) copies both files into a cache
folder and runs ``npm ci`` there; nothing from npm is committed or fetched at page-view time.
The cache is ``$THREESTUDIO_LIKE_WEB_DIR`` when set, else
``$XDG_CACHE_HOME/threestudio_like/web-<lock digest>`` (``~/.cache`` by default), one folder per
lock file so that a version bump installs beside the old one.

Pages never load model-viewer from a CDN: :func:`copy_model_viewer` copies its self-contained
UMD build (three.js, lit and gainmap-js bundled in) into a ``model-viewer/`` folder next to the
page, with the licence of model-viewer (Apache-2.0) and of each bundled library.
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from threestudio_like.errors import UserInputError

ENV_WEB_DIR = "THREESTUDIO_LIKE_WEB_DIR"
NPM_PROJECT = Path(__file__).resolve().parent / "npm"
MODEL_VIEWER = "@google/model-viewer"
MODEL_VIEWER_FILE = "dist/model-viewer-umd.min.js"
"""The classic-script (UMD) build: unlike the ES-module build it also runs from ``file://``."""
VIEWER_DIR = "model-viewer"
"""Folder next to a page that holds the copied script and its licences."""
VIEWER_SCRIPT = f"{VIEWER_DIR}/model-viewer-umd.min.js"
"""The script's path relative to the page."""
BUNDLED_LICENSES = {
    "LICENSE": MODEL_VIEWER,
    "LICENSE.three": "three",
    "LICENSE.lit": "lit",
    "LICENSE.gainmap-js": "@monogrid/gainmap-js",
}
"""Licence files copied beside the script: model-viewer's own and those of the libraries its
bundle contains (three.js MIT, lit BSD-3-Clause, gainmap-js MIT)."""
INSTALL_HINT = "run `make preview-assets` (or `python launch.py --preview-assets`; needs Node.js and npm)"


class WebAssetsError(UserInputError, RuntimeError):
    """Node.js/npm is missing, or the pinned npm packages could not be installed."""


def pinned_versions() -> Dict[str, str]:
    """``{package: version}`` as pinned in the shipped ``package.json``."""
    data = json.loads((NPM_PROJECT / "package.json").read_text(encoding="utf-8"))
    return dict(data["dependencies"])


def web_dir() -> Path:
    """The folder the npm packages are installed into (see the module docstring)."""
    if os.environ.get(ENV_WEB_DIR):
        return Path(os.environ[ENV_WEB_DIR]).expanduser()
    digest = hashlib.sha256((NPM_PROJECT / "package-lock.json").read_bytes()).hexdigest()[:10]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "threestudio_like" / f"web-{digest}"


def installed_package(name: str) -> Optional[Path]:
    """The folder of npm package ``name`` in the cache, when installed at its pinned version."""
    folder = web_dir() / "node_modules" / name
    try:
        version = json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return folder if version == pinned_versions().get(name, version) else None


def model_viewer_script() -> Optional[Path]:
    """The installed model-viewer script, or None (then see :data:`INSTALL_HINT`)."""
    package = installed_package(MODEL_VIEWER)
    script = package / MODEL_VIEWER_FILE if package else None
    return script if script is not None and script.is_file() else None


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def copy_model_viewer(page_dir: Union[str, Path]) -> Optional[str]:
    """Copy model-viewer and its licences into ``<page_dir>/model-viewer/``; returns the script's
    path relative to ``page_dir``, or None when it is not installed (nothing is written then)."""
    script = model_viewer_script()
    if script is None:
        return None
    dest = Path(page_dir) / VIEWER_DIR
    dest.mkdir(parents=True, exist_ok=True)
    _copy_if_changed(script, Path(page_dir) / VIEWER_SCRIPT)
    for target, package in BUNDLED_LICENSES.items():
        folder = web_dir() / "node_modules" / package
        source = folder / "LICENSE" if (folder / "LICENSE").is_file() else folder / "LICENSE.md"
        if source.is_file():
            _copy_if_changed(source, dest / target)
    version = pinned_versions()[MODEL_VIEWER]
    readme = (f"{MODEL_VIEWER} {version} from npm ({MODEL_VIEWER_FILE}), Apache-2.0: LICENSE.\n"
              "Its bundle contains three.js (MIT, LICENSE.three), lit (BSD-3-Clause, LICENSE.lit) and\n"
              "@monogrid/gainmap-js (MIT, LICENSE.gainmap-js).\n")
    if not (dest / "README.txt").is_file() or (dest / "README.txt").read_text(encoding="utf-8") != readme:
        (dest / "README.txt").write_text(readme, encoding="utf-8")
    return VIEWER_SCRIPT


def node_executable() -> Optional[str]:
    """``node`` (or ``nodejs``, Debian's old name) on PATH, or None."""
    return shutil.which("node") or shutil.which("nodejs")


def install_web_assets(timeout: float = 300.0, force: bool = False, quiet: bool = False) -> Path:
    """``npm ci`` of the pinned packages into :func:`web_dir` (nothing to do when they are all
    there, unless ``force``); returns that folder.

    Raises :class:`WebAssetsError` naming the problem (no npm, no network, a failed install).
    """
    versions = ", ".join(f"{k} {v}" for k, v in pinned_versions().items())
    if not force and all(installed_package(n) is not None for n in pinned_versions()):
        if not quiet:
            print(f"Preview tools already installed in {web_dir()}: {versions}")
        return web_dir()
    npm = shutil.which("npm")
    if npm is None or node_executable() is None:
        raise WebAssetsError("Node.js and npm are needed to install the preview tools "
                             "(Debian/Ubuntu: apt-get install nodejs npm; elsewhere Node.js 18 or newer from your system's packages).")
    target = web_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(NPM_PROJECT / name, target / name)
    # bounded waits, so that an unreachable registry fails in about a minute, not after retries
    cmd = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error",
           "--fetch-retries=1", "--fetch-timeout=60000"]
    try:
        done = subprocess.run(cmd, check=False, cwd=target, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WebAssetsError(f"npm ci did not finish within {timeout:.0f} s in {target}: is the npm "
                             "registry reachable?") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise WebAssetsError(f"npm ci failed in {target} (exit {done.returncode}):\n{tail}\n"
                             "Check that the npm registry is reachable, then run it again.")
    missing = [n for n in pinned_versions() if installed_package(n) is None]
    if missing:
        raise WebAssetsError(f"npm ci finished but {missing} are not in {target / 'node_modules'}.")
    if not quiet:
        print(f"Preview tools installed in {target}: {versions}")
    return target


def assets_main(argv: Sequence[str]) -> int:
    """``--preview-assets [--force | --where]``: install the pinned npm packages (again with
    ``--force``); ``--where`` only prints the folder."""
    args: List[str] = [a for a in argv if a != "--preview-assets"]
    if "-h" in args or "--help" in args:
        print("usage: launch.py --preview-assets [--force | --where]\n  npm ci of the pinned preview tools "
              f"({', '.join(pinned_versions())}) into {web_dir()}; --where only prints that folder")
        return 0
    if "--where" in args:
        print(web_dir())
        return 0
    if set(args) - {"--force"}:
        print(f"error: --preview-assets takes only --force or --where (got {args})", file=sys.stderr)
        return 2
    try:
        install_web_assets(force="--force" in args)
    except WebAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
