"""Which segments an index build merges: a size-tiered policy with a maximum segment size.

Merging every segment into one costs a rewrite of the whole namespace each time, and
holds more than any bound; never merging leaves a query to search one more segment per
build. Tiered (as in LSM trees): a segment's *tier* is how many times ``fan_in`` its live
rows are above ``index_threshold_rows`` (what one build of the tail makes), so segments
of a tier are of similar size. When a tier holds ``fan_in`` segments, the build merges
those (smallest tier first) with the tail into one segment of the next tier; each row is
thus rewritten about log_fan_in(namespace / threshold) times in all, and a namespace
holds at most ``fan_in - 1`` segments per tier. No merge makes a segment of more than
``segment_max_rows`` live rows: segments that big are left alone (dead rows in them are
rewritten once they are a third of the segment).

An explicit compaction (``compact=True``) merges every segment it can without passing
``segment_max_rows``, smallest first: a small namespace becomes one segment, as before.
"""

from __future__ import annotations

import math

from vectordb.manifest import SegmentRef


def tier(seg: SegmentRef, base_rows: int, fan_in: int) -> int:
    """The size tier of a segment: 0 up to ``fan_in`` builds of ``base_rows``, and so on."""
    ratio = max(seg.live_rows, 1) / max(base_rows, 1)
    return max(0, math.floor(math.log(ratio, fan_in))) if ratio > 1 else 0


def plan(segments: tuple[SegmentRef, ...], compact: bool, base_rows: int, fan_in: int,
         max_rows: int, has_tail: bool = True) -> list[SegmentRef]:
    """The segments to merge with the tail (``has_tail``: there are WAL rows) into one new
    segment ([]: none)."""
    fan_in = max(2, fan_in)
    by_size = sorted(segments, key=lambda s: (s.live_rows, s.id))
    if compact:
        picked, total = [], 0
        for seg in by_size:
            if total + seg.live_rows > max_rows:
                break
            picked.append(seg)
            total += seg.live_rows
        if len(picked) == 1 and not picked[0].tombstones and not has_tail:
            return []  # one clean segment and nothing to add: nothing to gain
        return picked
    tiers: dict[int, list[SegmentRef]] = {}
    for seg in by_size:
        if seg.live_rows < max_rows:
            tiers.setdefault(tier(seg, base_rows, fan_in), []).append(seg)
    for level in sorted(tiers):
        group = tiers[level]
        if len(group) >= fan_in:
            picked, total = [], 0
            for seg in group[:fan_in]:
                if total + seg.live_rows > max_rows:
                    break
                picked.append(seg)
                total += seg.live_rows
            if len(picked) >= 2:
                return picked
    # Dead rows: a segment a third dead is rewritten alone.
    return [s for s in by_size if s.tombstones * 3 >= s.rows > 0][:1]
