"""Popularity summed over per-partition shards (the partitioned key layout): the top n is exact,
whatever the shards hold, and costs one ZREVRANGE with a single shard."""

from __future__ import annotations

import random

import pytest

from services.inputs import top_of_shards


class _ZsetPipe:
    def __init__(self, db):
        self.db, self.ops = db, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def zrevrange(self, key, start, stop, withscores=True):
        self.ops.append(lambda: self.db.zrevrange(key, start, stop, withscores=withscores))

    def zmscore(self, key, members):
        self.ops.append(lambda: [self.db.z.get(key, {}).get(m) for m in members])

    def execute(self):
        return [op() for op in self.ops]


class _Zsets:
    """ZREVRANGE / ZMSCORE over dicts, ties broken as Redis does (members in reverse order)."""

    def __init__(self, z: dict[str, dict[str, float]]):
        self.z = z
        self.calls = 0

    def zrevrange(self, key, start, stop, withscores=True):
        self.calls += 1
        ranked = sorted(self.z.get(key, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        return ranked[start: None if stop == -1 else stop + 1]

    def pipeline(self, transaction=False):
        return _ZsetPipe(self)


@pytest.mark.parametrize("seed", range(40))
def test_the_top_of_summed_shards_is_exact(seed):
    rng = random.Random(seed)
    n_shards, n_items = rng.randint(2, 6), rng.randint(1, 300)
    # skewed shards: an item may be hot in one partition and absent from the others
    z = {f"s{k}": {f"i{i}": float(rng.choice([0.5, 1, 2, 3]) * rng.randint(1, 40))
                   for i in range(n_items) if rng.random() < rng.choice([0.1, 0.5, 0.9])} for k in range(n_shards)}
    total: dict[str, float] = {}
    for shard in z.values():
        for item, score in shard.items():
            total[item] = total.get(item, 0.0) + score
    n = rng.choice([1, 5, 20, 100])
    got = top_of_shards(_Zsets(z), list(z), n)
    expected = sorted(total.values(), reverse=True)[:n]
    assert [s for _, s in got] == expected
    assert all(total[item] == s for item, s in got)


def test_an_item_spread_thin_over_shards_beats_each_shards_local_top():
    # "x" is no shard's top 1 but the best overall: a per-shard top-n merge would miss it
    z = {"s0": {"a": 5.0, "x": 4.0}, "s1": {"b": 5.0, "x": 4.0}, "s2": {"c": 5.0, "x": 4.0}}
    assert top_of_shards(_Zsets(z), list(z), 1) == [("x", 12.0)]


def test_one_shard_is_one_read():
    db = _Zsets({"rs:pop": {"a": 1.0, "b": 3.0}})
    assert top_of_shards(db, ["rs:pop"], 5) == [("b", 3.0), ("a", 1.0)]
    assert db.calls == 1
