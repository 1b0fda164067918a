"""Largest-Triangle-Three-Buckets downsampling (Sveinn Steinarsson, 2013): keeps the first and
last points and, from each bucket in between, the point forming the largest triangle with the
point kept before it and the average of the next bucket. Charts keep their shape."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def lttb(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], threshold: int
) -> npt.NDArray[np.int64]:
    """Indices of the points to keep (ascending), at most `threshold` of them."""
    n = len(x)
    if threshold >= n or threshold < 3:
        return np.arange(n, dtype=np.int64)
    kept = np.empty(threshold, dtype=np.int64)
    kept[0] = 0
    kept[-1] = n - 1
    # Bucket edges over the points between the first and the last.
    edges = np.linspace(1, n - 1, threshold - 1).astype(np.int64)
    previous = 0
    for i in range(threshold - 2):
        start, end = edges[i], max(edges[i + 1], edges[i] + 1)
        if i + 2 < len(edges):
            next_start, next_end = edges[i + 1], max(edges[i + 2], edges[i + 1] + 1)
            avg_x, avg_y = x[next_start:next_end].mean(), y[next_start:next_end].mean()
        else:
            avg_x, avg_y = x[n - 1], y[n - 1]
        px, py = x[previous], y[previous]
        area = np.abs((px - avg_x) * (y[start:end] - py) - (px - x[start:end]) * (avg_y - py))
        previous = int(start + np.argmax(area))
        kept[i + 1] = previous
    return kept
