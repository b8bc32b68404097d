"""Small statistics for benchmark reports: Wilson score intervals and summaries."""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial rate ``successes / n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_summary(flags: Sequence[bool]) -> Dict[str, float]:
    """``{rate, lo, hi, k, n}`` for a list of per-asset yes/no outcomes."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else float("nan"), "lo": lo, "hi": hi, "k": k, "n": n}


def mean_summary(values: Sequence[float]) -> Dict[str, float]:
    """``{mean, std, n}`` of finite values (NaNs are skipped)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(n - 1, 1))
    return {"mean": mean, "std": std, "n": n}
