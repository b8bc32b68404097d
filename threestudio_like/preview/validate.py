"""The Khronos glTF validator (npm ``gltf-validator``) on exported ``.glb``/``.gltf`` files.

A small Node.js script (``validate.cjs``) calls the package's ``validateBytes`` on one file and
prints its JSON report; :func:`validate_gltf` runs it and returns a :class:`GltfReport` with the
issue counts by severity (the validator's 0 error, 1 warning, 2 info, 3 hint) and the messages.
The package comes from the pinned npm install (:mod:`.assets`). Command line:
``python launch.py --validate-gltf FILE...`` (exit 1 when any file has errors).
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from threestudio_like.preview.assets import INSTALL_HINT, WebAssetsError, installed_package, node_executable

VALIDATOR = "gltf-validator"
SCRIPT = Path(__file__).resolve().parent / "validate.cjs"
SEVERITIES = ("error", "warning", "info", "hint")


@dataclass
class GltfReport:
    """What the validator says about one file."""

    path: str
    """The file validated."""
    counts: Dict[str, int]
    """Issues by severity: error, warning, info, hint."""
    messages: List[Dict[str, Any]] = field(default_factory=list)
    """Each issue: ``code``, ``message``, ``severity`` (a word), ``pointer`` (JSON pointer)."""
    raw: Dict[str, Any] = field(default_factory=dict)
    """The validator's full report (``info`` holds vertex and triangle counts, textures ...)."""

    @property
    def errors(self) -> int:
        return self.counts["error"]

    @property
    def warnings(self) -> int:
        return self.counts["warning"]

    def issues(self, severity: str) -> List[Dict[str, Any]]:
        """The messages of one severity."""
        return [m for m in self.messages if m["severity"] == severity]

    def summary(self) -> str:
        """One line of counts, then one line per error and warning."""
        head = f"{self.path}: " + ", ".join(f"{self.counts[s]} {s}s" for s in SEVERITIES)
        lines = [f"  {m['severity']} {m['code']} at {m.get('pointer') or '/'}: {m['message']}"
                 for m in self.messages if m["severity"] in ("error", "warning")]
        return "\n".join([head] + lines)


def unavailable_reason() -> Optional[str]:
    """Why the validator cannot run here, or None when it can."""
    if node_executable() is None:
        return "Node.js is not installed (Debian/Ubuntu: apt-get install nodejs npm)"
    if installed_package(VALIDATOR) is None:
        return f"the npm package {VALIDATOR} is not installed: {INSTALL_HINT}"
    return None


def _report(path: Path, raw: Dict[str, Any]) -> GltfReport:
    issues = raw.get("issues") or {}
    counts = {"error": int(issues.get("numErrors", 0)), "warning": int(issues.get("numWarnings", 0)),
              "info": int(issues.get("numInfos", 0)), "hint": int(issues.get("numHints", 0))}
    messages = []
    for m in issues.get("messages") or []:
        level = m.get("severity", 0)
        messages.append({"code": m.get("code", ""), "message": m.get("message", ""),
                         "severity": SEVERITIES[level] if 0 <= level < len(SEVERITIES) else str(level),
                         "pointer": m.get("pointer") or m.get("offset")})
    return GltfReport(str(path), counts, messages, raw)


def validate_gltf(path: Union[str, Path], max_issues: int = 0, timeout: float = 120.0) -> GltfReport:
    """Validate one ``.glb``/``.gltf`` (``max_issues``: 0 for all). Raises :class:`WebAssetsError`
    when the validator is unavailable or fails, ``FileNotFoundError`` for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no glTF file at {path}")
    reason = unavailable_reason()
    if reason:
        raise WebAssetsError(f"cannot validate {path}: {reason}")
    cmd = [str(node_executable()), str(SCRIPT), str(installed_package(VALIDATOR)), str(path), str(int(max_issues))]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WebAssetsError(f"the glTF validator took over {timeout:.0f} s on {path}") from None
    if done.returncode != 0:
        raise WebAssetsError(f"the glTF validator could not read {path}: {done.stderr.strip()[-1000:]}")
    return _report(path, json.loads(done.stdout))


def validate_main(argv: Sequence[str]) -> int:
    """``--validate-gltf FILE...``: print each report's summary; exit 1 when a file has errors, 2
    when one could not be validated (missing, or no validator)."""
    files = [a for a in argv if a != "--validate-gltf"]
    usage = "usage: launch.py --validate-gltf FILE.glb [FILE.glb ...]  (Khronos glTF validator; exit 1 on errors)"
    if "-h" in files or "--help" in files:
        print(usage)
        return 0
    if not files or any(f.startswith("-") for f in files):
        print(usage, file=sys.stderr)
        return 2
    worst = 0
    for name in files:
        try:
            report = validate_gltf(name)
        except (WebAssetsError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            worst = 2
            continue
        print(report.summary())
        worst = max(worst, 1 if report.errors else 0)
    return worst
