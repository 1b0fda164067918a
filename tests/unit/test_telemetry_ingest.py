"""Unit tests of the group-commit writer's in-memory steps."""

from __future__ import annotations

import numpy as np
import pytest

from services.telemetry.ingest import repeats


def reference(meters: list[int], times: list[int]) -> tuple[list[bool], list[int]]:
    """Repeated (same meter and time as an earlier reading) and the first reading's position."""
    first: dict[tuple[int, int], int] = {}
    repeated, leader = [], []
    for position, key in enumerate(zip(meters, times, strict=True)):
        repeated.append(key in first)
        leader.append(first.setdefault(key, position))
    return repeated, leader


@pytest.mark.parametrize("seed", range(200))
def test_repeats_matches_a_plain_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    owners: list[int] = []
    meters: list[int] = []
    times: list[int] = []
    for batch in range(int(rng.integers(1, 6))):
        size, meter = int(rng.integers(0, 8)), int(rng.integers(0, 3))
        owners += [batch] * size
        meters += [meter] * size
        if rng.random() < 0.5:  # increasing times, the usual batch
            times += sorted(rng.choice(100, size, replace=False).tolist())
        else:  # out of order, repeats inside the batch
            times += rng.integers(0, 6, size).tolist()
    batch_meters = dict(zip(owners, meters, strict=True))
    one_batch_per_meter = len(set(batch_meters.values())) == len(batch_meters)

    repeated, leader = repeats(
        np.array(meters, dtype=np.int32),
        np.array(times, dtype=np.int64),
        np.array(owners, dtype=np.int32),
        one_batch_per_meter,
    )

    assert (repeated.tolist(), leader.tolist()) == reference(meters, times)
