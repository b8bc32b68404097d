"""Janus metrics for real runs, from a turntable of N views at azimuths ``360 i / N`` (view 0 =
the front, azimuth 0).

* **face arcs** — separate azimuth arcs where a face detector fires (default: the Haar cascades
  bundled with opencv-python-headless 4.x, frontal human + cat faces; pluggable). Janus: >= 2.
  When the front views have no detection the asset is *undetermined* for this metric.
* **second-peak ratio** (JPR) — ``(1 + max_{|azi| >= 135} S) / (1 + median_{45 <= |azi| <= 135} S)``
  with ``S`` the centred cosine similarity of a view (or its mirror image) to the front view under a weight-free
  gradient-orientation descriptor: > 1 when the back looks more like the front than the sides do.
* **view-classification Janus** — a pluggable classifier labels each view front/side/back (zero-
  shot CLIP "front/side/back view of <subject>" when CLIP weights are available offline); the
  back-as-front rate is the fraction of true back views (|azi| > 135) labelled front; Janus when
  it exceeds 0.5 or "front" occurs on >= 2 arcs.
* **CLIP score** — 100 x cosine of image and prompt embeddings, when CLIP is available.

:func:`aggregate` reports means and, for rates, Wilson 95% intervals.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from threestudio_like.janus.measures import count_arcs
from threestudio_like.janus.stats import mean_summary, rate_summary

VIEW_CLASSES = ("front", "side", "back")


def azimuths_deg(n: int) -> np.ndarray:
    """Turntable azimuths in ``(-180, 180]`` for N uniform views starting at 0."""
    az = np.arange(n) * 360.0 / n
    return np.where(az > 180, az - 360, az)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [0, 1] or uint8 ``[H, W, 3]`` -> uint8."""
    if img.dtype == np.uint8:
        return img
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# face arcs


class HaarFaceDetector:
    """Face counts per image with OpenCV's bundled Haar cascades (opencv-python-headless 4.x)."""

    def __init__(self, cascades: Sequence[str] = ("frontalface_default", "frontalcatface"),
                 scale_factor: float = 1.1, min_neighbors: int = 3, min_size_fraction: float = 0.12) -> None:
        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not folder or not os.path.isdir(folder):
            raise RuntimeError("OpenCV has no bundled Haar cascades (opencv 5 dropped them): "
                               "pip install -c constraints-cpu.txt 'opencv-python-headless>=4.8,<5'.")
        self.cv2 = cv2
        self.cascades = [cv2.CascadeClassifier(os.path.join(folder, f"haarcascade_{c}.xml")) for c in cascades]
        self.scale_factor, self.min_neighbors, self.min_size_fraction = scale_factor, min_neighbors, min_size_fraction

    def __call__(self, img: np.ndarray) -> int:
        gray = self.cv2.cvtColor(to_uint8(img), self.cv2.COLOR_RGB2GRAY)
        side = max(12, int(self.min_size_fraction * min(gray.shape)))
        return max(
            len(c.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                   minSize=(side, side)))
            for c in self.cascades
        )


def face_arcs(views: np.ndarray, detector: Callable[[np.ndarray], int], min_gap_deg: float = 15.0,
              front_window_deg: float = 45.0) -> Dict[str, Any]:
    """Face-arc count of a turntable ``[N, H, W, 3]``: ``face_arcs``, per-view ``face_counts``,
    ``front_detected`` (a face within ``front_window_deg`` of azimuth 0) and ``multi_face_view``."""
    n = len(views)
    counts = [int(detector(v)) for v in views]
    arcs = count_arcs([c > 0 for c in counts], min_gap=max(1, round(n * min_gap_deg / 360)))
    az = azimuths_deg(n)
    front = any(c > 0 for c, a in zip(counts, az) if abs(a) <= front_window_deg)
    return {"face_arcs": arcs, "face_counts": counts, "front_detected": front,
            "multi_face_view": max(counts) >= 2 if counts else False}


# ------------------------------------------------------------------------------------------
# second-peak ratio


def orientation_descriptor(img: np.ndarray, size: int = 64, cells: int = 8, bins: int = 9) -> np.ndarray:
    """A weight-free HOG-like descriptor: unsigned gradient-orientation histograms on a
    ``cells x cells`` grid of the grayscale image resized to ``size``, L2-normalised."""
    import cv2

    gray = cv2.cvtColor(to_uint8(img), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
    c = size // cells
    hist = np.zeros((cells, cells, bins), np.float32)
    for k in range(bins):
        m = np.where(b == k, mag, 0.0)
        hist[..., k] = m.reshape(cells, c, cells, c).sum(axis=(1, 3))
    d = hist.reshape(-1)
    return d / (np.linalg.norm(d) + 1e-8)


def front_similarities(views: np.ndarray) -> np.ndarray:
    """``S(azi)``: cosine similarity to view 0 of each view (best of it and its mirror image),
    after subtracting the turntable's mean descriptor (which removes what every view shares,
    e.g. a round silhouette, so that S measures the view-specific appearance)."""
    desc = np.stack([orientation_descriptor(v) for v in views])
    mirror = np.stack([orientation_descriptor(v[:, ::-1]) for v in views])
    mean = 0.5 * (desc.mean(0) + mirror.mean(0))

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - mean
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)

    front = unit(desc[0])
    return np.maximum(unit(desc) @ front, unit(mirror) @ front)


def second_peak_ratio(views: np.ndarray) -> Dict[str, Any]:
    """JPR = max back similarity / median side similarity to the front view (see module doc)."""
    s = front_similarities(views)
    az = np.abs(azimuths_deg(len(views)))
    back, side = s[az >= 135], s[(az >= 45) & (az <= 135)]
    if not (len(back) and len(side)):
        return {"second_peak_ratio": float("nan"), "front_similarity": s.tolist()}
    # similarities are shifted to [0, 2] (cosine + 1) so that the ratio is defined and positive
    ratio = float((back.max() + 1) / (np.median(side) + 1))
    return {"second_peak_ratio": ratio, "front_similarity": s.tolist()}


# ------------------------------------------------------------------------------------------
# view classification and CLIP score (optional: need CLIP weights offline)


class ClipModel:
    """Zero-shot CLIP (transformers) from a local folder or the Hugging Face cache, offline."""

    def __init__(self, name_or_path: str = "openai/clip-vit-base-patch32") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(name_or_path, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(name_or_path, local_files_only=True)

    def embed(self, images: Sequence[np.ndarray], texts: Sequence[str]):
        with self.torch.no_grad():
            inputs = self.processor(text=list(texts), images=[to_uint8(i) for i in images],
                                    return_tensors="pt", padding=True)
            out = self.model(**inputs)
            img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
            txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        return img.numpy(), txt.numpy()

    def classify_views(self, views: Sequence[np.ndarray], subject: str) -> List[str]:
        img, txt = self.embed(views, [f"{c} view of {subject}" for c in VIEW_CLASSES])
        return [VIEW_CLASSES[i] for i in (img @ txt.T).argmax(1)]

    def clip_score(self, views: Sequence[np.ndarray], prompt: str) -> float:
        img, txt = self.embed(views, [prompt])
        return float(100 * (img @ txt.T).clip(0).mean())


def try_clip(name_or_path: Optional[str]) -> Optional[ClipModel]:
    """A :class:`ClipModel`, or None when no weights are available offline."""
    if not name_or_path:
        return None
    try:
        return ClipModel(name_or_path)
    except Exception:  # missing weights / no network: the metric is skipped
        return None


def true_view_class(az_deg: float) -> str:
    a = abs(az_deg)
    return "front" if a < 45 else ("back" if a > 135 else "side")


def view_classification(labels: Sequence[str]) -> Dict[str, Any]:
    """Back-as-front rate, view accuracy, front arcs and the Janus flag from per-view labels."""
    az = azimuths_deg(len(labels))
    truth = [true_view_class(a) for a in az]
    back = [l for l, t in zip(labels, truth) if t == "back"]
    bfr = sum(l == "front" for l in back) / max(len(back), 1)
    arcs = count_arcs([l == "front" for l in labels], min_gap=max(1, round(len(labels) * 15 / 360)))
    return {"view_labels": list(labels), "view_accuracy": float(np.mean([l == t for l, t in zip(labels, truth)])),
            "back_as_front_rate": bfr, "front_arcs": arcs, "janus_view": bool(bfr > 0.5 or arcs >= 2)}


# ------------------------------------------------------------------------------------------
# per asset and aggregated


def asset_metrics(views: np.ndarray, prompt: str = "", subject: Optional[str] = None,
                  detector: Optional[Callable[[np.ndarray], int]] = None,
                  classifier: Optional[Callable[[Sequence[np.ndarray], str], List[str]]] = None,
                  clip: Optional[ClipModel] = None) -> Dict[str, Any]:
    """Every available metric for one turntable ``[N, H, W, 3]`` (float [0, 1] or uint8)."""
    out: Dict[str, Any] = {}
    if detector is not None:
        fa = face_arcs(views, detector)
        out.update(fa)
        out["janus_face"] = fa["face_arcs"] >= 2 if fa["front_detected"] else None
    out.update(second_peak_ratio(views))
    if classifier is None and clip is not None:
        classifier = clip.classify_views
    if classifier is not None:
        out.update(view_classification(classifier(list(views), subject or prompt)))
    if clip is not None and prompt:
        out["clip_score"] = clip.clip_score(list(views), prompt)
    return out


def aggregate(assets: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Means for numbers, Wilson intervals for rates, over assets (None = undetermined, skipped)."""
    out: Dict[str, Any] = {"n_assets": len(assets)}
    for key in ("face_arcs", "second_peak_ratio", "back_as_front_rate", "view_accuracy", "clip_score"):
        vals = [a[key] for a in assets if a.get(key) is not None]
        if vals:
            out[key] = mean_summary(vals)
    for key in ("janus_face", "janus_view"):
        flags = [a[key] for a in assets if a.get(key) is not None]
        if flags:
            out[key] = rate_summary(flags)
    jpr = [a["second_peak_ratio"] for a in assets if a.get("second_peak_ratio") is not None
           and math.isfinite(a["second_peak_ratio"])]
    if jpr:
        out["second_peak_above_1"] = rate_summary([r > 1.0 for r in jpr])
    return out
