"""Every chunking of 64-bit hashes at t=8 priced with the search's own cost model: why the
search grows ~N^1.5 from 1M to 10M and which plans would grow as N^1.2 instead.

    python bench/search_plans.py            # seconds; no hashes are searched

A plan is up to four disjoint chunks of any widths with a radius R each; it finds every pair
within t when sum(R_i + 1) >= t + 1. A chunk finds the pairs within R on
it by variants: R even, every hash with <= R/2 bits flipped; R odd, <= (R-1)/2 bits flipped on
one side and <= (R+1)/2 on the other (the search implements the even case). Its cost is the
variants it sorts (linear in N) plus the candidate pairs it compares, which for uniform hashes
is the pairs of variants sharing a key (quadratic in N). The costs per variant, per grouped
variant and per candidate are `search.COST_*`, fitted to measured runs of both kinds of plan.

Prints, for each N, the cheapest plans; then, over all plans, the growth exponent from 1M to
10M of each plan kept fixed, and the cheapest 10M cost among plans growing at most N^1.2.
"""

from __future__ import annotations

import itertools
import math
import sys
from functools import cache
from pathlib import Path

try:
    import curate  # noqa: F401  (installed, or run with PYTHONPATH=.)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.dedupe.search import (
    COST_CANDIDATE,
    COST_CHUNK,
    COST_GROUPED,
    COST_VARIANT,
    _chunk_cost,
)

BITS, T = 64, 8


@cache
def ball(b: int, r: int) -> int:
    return sum(math.comb(b, k) for k in range(r + 1))


def chunk_cost(n: float, b: int, radius: int) -> float:
    """CPU seconds of one chunk of b bits that finds pairs within `radius`: the search's own
    price for even radii, the same model with two entry roles for odd ones."""
    low, high = radius // 2, (radius + 1) // 2
    if low == high:
        return _chunk_cost(int(n), b, low)
    sides = ball(b, low), ball(b, high)
    variants = n * sum(sides)
    per_key = variants / 2**b
    grouped = variants * -math.expm1(-per_key)
    candidates = n * n * sides[0] * sides[1] / 2**b  # pairs of one entry of each role sharing a key
    return (COST_CHUNK + COST_VARIANT * variants + COST_GROUPED * grouped
            + COST_CANDIDATE * candidates)


def plans() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Radii adding up to exactly t + 1 units (a larger radius only adds cost) and widths
    using all 64 bits (a wider chunk at the same radius has fewer candidates)."""
    found = set()
    for m in range(1, 5):
        for radii in itertools.product(range(T + 1), repeat=m):
            if sum(r + 1 for r in radii) != T + 1 or list(radii) != sorted(radii):
                continue
            for widths in itertools.product(range(4, BITS + 1), repeat=m - 1):
                if sum(widths) <= BITS - 4:  # chunk order does not matter: one of each
                    chunks = sorted(zip((*widths, BITS - sum(widths)), radii, strict=True))
                    found.add((tuple(w for w, _ in chunks), tuple(r for _, r in chunks)))
    return sorted(found)


def cost(plan: tuple[tuple[int, ...], tuple[int, ...]], n: float) -> float:
    return sum(chunk_cost(n, b, r) for b, r in zip(*plan, strict=True))


def show(plan: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    return " + ".join(f"{b} bits R={r}" for b, r in zip(*plan, strict=True))


def main() -> None:
    every = plans()
    sizes = (1e6, 3e6, 1e7, 3e7, 1e8)
    print(f"{len(every):,} plans (1-4 chunks of >= 4 bits covering {BITS}, sum(R + 1) = {T + 1})\n")
    print("| hashes | cheapest plan | model cost | next cheapest |")
    print("|---|---|---|---|")
    for n in sizes:
        ranked = sorted(every, key=lambda p: cost(p, n))
        print(f"| {n:,.0f} | {show(ranked[0])} | {cost(ranked[0], n):.1f} s | "
              f"{show(ranked[1])}: {cost(ranked[1], n):.1f} s |")
    growth = [(math.log10(cost(p, 1e7) / cost(p, 1e6)), cost(p, 1e7), p) for p in every]
    best = min(growth, key=lambda g: g[1])
    print(f"\ncheapest at 10M: {show(best[2])}, {best[1]:.0f} s, growth 1M->10M N^{best[0]:.2f}")
    flat = min((g for g in growth if g[0] <= 1.2), key=lambda g: g[1])
    print(f"cheapest at 10M among plans growing <= N^1.2: {show(flat[2])}, {flat[1]:.0f} s "
          f"({flat[1] / best[1]:.1f}x the cheapest), N^{flat[0]:.2f}; at 1M "
          f"{cost(flat[2], 1e6):.1f} s vs {cost(best[2], 1e6):.1f} s")
    per_n = [min(cost(p, n) for p in every) for n in (1e6, 1e7)]
    print(f"cheapest plan at each N: 1M {per_n[0]:.1f} s, 10M {per_n[1]:.1f} s, "
          f"N^{math.log10(per_n[1] / per_n[0]):.2f}")


if __name__ == "__main__":
    main()
