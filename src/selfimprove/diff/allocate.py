"""Adaptive allocation of the sampling budget across regions, from the screening scores.

The budget is a number of sampled outputs *per model*; one sample per model per
confirmatory prompt (paired design), so a region's allocation is capped by its number of
confirmatory prompts.

Rule (deterministic given the scores):

1. every region first gets ``min_per_region`` (capped by its capacity; used for calibration
   runs that must exercise the tests everywhere);
2. regions whose screening score exceeds ``floor`` share the rest in proportion to their
   score, water-filling around capacities;
3. allocations that ended up below ``min_test`` (too few pairs for any test to reject after
   multiplicity correction) are taken back and handed, in rank order, to the top regions
   still below capacity. Regions left with 0 samples get ``p = 1``.

Validity does not depend on this rule: it only looks at screening data, which the tests
never see (sample splitting).
"""

from __future__ import annotations

from collections.abc import Mapping


def allocate_budget(
    scores: Mapping[str, float],
    capacity: Mapping[str, int],
    budget: int,
    *,
    min_per_region: int = 0,
    min_test: int = 6,
    floor: float = 1e-4,
) -> dict[str, int]:
    """Samples per model for each region (see module doc). Never exceeds ``budget``."""
    names = sorted(scores, key=lambda r: (-scores[r], r))
    alloc = {r: 0 for r in names}
    left = max(0, budget)
    for r in names:
        give = min(min_per_region, capacity.get(r, 0), left)
        alloc[r] = give
        left -= give
    eligible = [r for r in names if scores[r] > floor]
    # water-filling proportional to score
    while left > 0:
        open_ = [r for r in eligible if alloc[r] < capacity.get(r, 0)]
        total = sum(scores[r] for r in open_)
        if not open_ or total <= 0:
            break
        given = 0
        for r in open_:
            share = int(left * scores[r] / total)
            share = min(share, capacity[r] - alloc[r])
            alloc[r] += share
            given += share
        left -= given
        if given == 0:
            # rounding left a remainder smaller than the number of open regions: rank order
            for r in open_:
                if left == 0:
                    break
                alloc[r] += 1
                left -= 1
            break
    # reclaim allocations too small to test, refill the top regions
    for r in names:
        if min_per_region < alloc[r] < min_test:
            left += alloc[r] - min_per_region
            alloc[r] = min_per_region
    for r in eligible:
        room = capacity.get(r, 0) - alloc[r]
        if left <= 0:
            break
        if room <= 0 or alloc[r] + min(room, left) < min_test:
            continue
        give = min(room, left)
        alloc[r] += give
        left -= give
    assert sum(alloc.values()) <= budget
    return alloc
