"""Logged propensities are the policy's true marginal P(item at slot): checked against the
empirical frequency over many draws."""

from collections import Counter

import numpy as np
import pytest

from scoring.config import ExplorationConfig
from scoring.exploration import make_slate, marginals

RANKED = [(f"i{n}", float(100 - n)) for n in range(40)]


def test_deterministic_policy_logs_one():
    slate = make_slate(RANKED, 5, ExplorationConfig(), np.random.default_rng(0))
    assert [s.item_id for s in slate] == ["i0", "i1", "i2", "i3", "i4"]
    assert all(s.propensity == 1.0 and not s.explored for s in slate)


@pytest.mark.parametrize("epsilon,pool", [(0.2, 10), (0.5, 6)])
def test_epsilon_slot_propensities_match_empirical_frequencies(epsilon, pool):
    cfg = ExplorationConfig(policy="epsilon_slot", epsilon=epsilon, pool_size=pool)
    rng = np.random.default_rng(7)
    k, n = 5, 40_000
    counts: Counter = Counter()
    logged: dict = {}
    for _ in range(n):
        slate = make_slate(RANKED, k, cfg, rng)
        assert len({s.item_id for s in slate}) == k  # never the same item twice
        for p, s in enumerate(slate):
            counts[(s.item_id, p)] += 1
            assert logged.setdefault((s.item_id, p), s.propensity) == s.propensity  # same (item, slot) -> same number
    assert set(logged) == {(f"i{p}", p) for p in range(k)} | {(f"i{j}", p) for j in range(k, k + pool) for p in range(k)}
    for key, prop in logged.items():
        freq = counts[key] / n
        sd = np.sqrt(prop * (1 - prop) / n)
        assert abs(freq - prop) < 5 * sd + 1e-9, (key, freq, prop)
    # propensities of each slot sum to one: every slot shows exactly one item
    for p in range(k):
        assert sum(v for (i, q), v in logged.items() if q == p) == pytest.approx(1.0)


def test_too_small_pool_is_deterministic_for_that_request():
    cfg = ExplorationConfig(policy="epsilon_slot", epsilon=0.5, pool_size=10)
    slate = make_slate(RANKED[:7], 5, cfg, np.random.default_rng(0))
    assert [s.item_id for s in slate] == ["i0", "i1", "i2", "i3", "i4"] and all(s.propensity == 1.0 for s in slate)


@pytest.mark.parametrize("policy,epsilon,pool", [("epsilon_slot", 0.3, 8), ("epsilon_slate", 0.3, 8),
                                                 ("epsilon_slate", 0.6, 3)])
def test_marginals_equal_empirical_frequencies_and_logged_propensities(policy, epsilon, pool):
    """`marginals` (what replay uses for an evaluated policy) is the distribution make_slate
    draws from, for every (item, slot) including the pairs a policy shows only rarely."""
    cfg = ExplorationConfig(policy=policy, epsilon=epsilon, pool_size=pool)
    k, n = 4, 40_000
    rng = np.random.default_rng(11)
    want = marginals([i for i, _ in RANKED], k, cfg)
    counts: Counter = Counter()
    for _ in range(n):
        slate = make_slate(RANKED, k, cfg, rng)
        assert len({s.item_id for s in slate}) == k
        for p, s in enumerate(slate):
            counts[(s.item_id, p)] += 1
            assert s.propensity == pytest.approx(want[p][s.item_id])
    for p in range(k):
        assert sum(want[p].values()) == pytest.approx(1.0)
        for item, prob in want[p].items():
            sd = np.sqrt(prob * (1 - prob) / n)
            assert abs(counts[(item, p)] / n - prob) < 5 * sd + 1e-9, (policy, item, p)
    assert all(item in want[p] for item, p in counts)  # nothing shown outside the support


def test_epsilon_slate_covers_reordering_of_the_greedy_items():
    m = marginals([i for i, _ in RANKED], 3, ExplorationConfig(policy="epsilon_slate", epsilon=0.2, pool_size=7))
    assert m[0]["i1"] == pytest.approx(0.2 / 10) and m[0]["i0"] == pytest.approx(0.8 + 0.02)
    slot = marginals([i for i, _ in RANKED], 3, ExplorationConfig(policy="epsilon_slot", epsilon=0.2, pool_size=7))
    assert "i1" not in slot[0]  # epsilon_slot never moves a greedy item
