"""Does replaying the served variant give back what was served? `served_order_reproduced_share`.

An estimate of a policy's value is only as good as the replay's picture of that policy. The
check: replay each logged request with the variant that served it (`VariantPolicy` with the
variant's versions, cascade and fusion) and count the logged greedy slots whose item the
replayed greedy slate puts at the same slot.

Which logged slots are greedy (scoring/exploration.py): the greedy slate is the head of the
final ranking, and the logged support is that ranking's head, so the greedy item of slot p is
support[p].
- deterministic: every slot is greedy.
- epsilon_slot: an exploring slot shows a pool item (ranked below the slate), never support[p];
  so slot p is greedy iff its logged item is support[p].
- epsilon_slate: an exploring slate is a random draw from the support, which may put support[p]
  at slot p by chance; `make_slate` marks that slot not explored, and it shows the greedy item,
  so the same rule holds: greedy iff the logged item is support[p].
A record of an exploring policy without a support cannot tell; its slots are left out (counted).
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from pipelines.replay.policies import VariantPolicy, logging_exploration
from recstream.events import ImpressionLog


def greedy_slots(imp: ImpressionLog) -> list[int] | None:
    """Positions of `imp`'s slate that show the greedy item; None when the record cannot tell."""
    if logging_exploration(imp).policy == "deterministic":
        return [s.position for s in imp.slate]
    if not imp.support:
        return None
    return [s.position for s in imp.slate if s.position < len(imp.support) and s.item_id == imp.support[s.position]]


def served_order_reproduced(impressions: list[ImpressionLog], served: Mapping[str, VariantPolicy]) -> dict:
    """Replays each request with `served[request's variant]`.

    Returns: {"share": reproduced / greedy slots (None without any), "n_greedy_slots",
    "n_reproduced", "by_variant": {variant: share}, "paths": {path or note: requests},
    "n_requests", "skipped": {why: requests}}.
    """
    hits: Counter[str] = Counter()
    slots: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    n = 0
    for imp in impressions:
        pol = served.get(imp.variant)
        if pol is None:
            skipped["variant_not_replayed"] += 1
            continue
        greedy = greedy_slots(imp)
        if greedy is None:
            skipped["no_support"] += 1
            continue
        r = pol.ranking(imp)
        n += 1
        paths[r.path] += 1
        paths.update(r.notes)
        replayed = r.items[: len(imp.slate)]  # the replayed greedy slate
        shown = {s.position: s.item_id for s in imp.slate}
        for p in greedy:
            slots[imp.variant] += 1
            hits[imp.variant] += p < len(replayed) and replayed[p] == shown[p]
    total = sum(slots.values())
    return {"share": sum(hits.values()) / total if total else None, "n_greedy_slots": total,
            "n_reproduced": sum(hits.values()), "by_variant": {v: hits[v] / slots[v] for v in sorted(slots)},
            "paths": dict(paths), "n_requests": n, "skipped": dict(skipped)}
