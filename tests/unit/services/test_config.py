import pytest
from pydantic import ValidationError

from services.config import ServeConfig


def test_defaults_are_valid():
    c = ServeConfig()
    assert c.layout == "fused" and 0 < c.num_cpus < 1 and c.num_gpus == 0


@pytest.mark.parametrize("kwargs,needle", [
    ({"variants": {"A": {"share": 0.5}, "B": {"share": 0.4}}}, "sum 0.9"),
    ({"coarse_top_k": 300, "candidate_top_k": 200}, "coarse_top_k (300) must be <= candidate_top_k (200)"),
    ({"max_k": 300, "coarse_top_k": 250, "popular_pool_size": 1000}, "max_k (300) must be <= coarse_top_k (250)"),
    ({"retrieval_index": "hnsw", "hnsw_ef_search": 100}, "hnsw_ef_search (100) must be >= candidate_top_k (1000)"),
    ({"variants": {"A": {"share": 1.0, "exploration": {"policy": "epsilon_slot", "epsilon": 1.5}}}}, "epsilon"),
    ({"variants": {"A": {"share": 1.0, "ranker": {"name": "ranker", "verison": "x"}}}}, "verison"),
    ({"device": "tpu"}, "device"),
    ({"variants": {}}, "at least one variant"),
    ({"popular_pool_size": 10, "max_k": 20}, "popular_pool_size (10) must be >= max_k (20)"),
    ({"layout": "mesh"}, "layout"),
    ({"timeout": 3}, "timeout"),
])
def test_bad_config_fails_at_load_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        ServeConfig(**kwargs)
    assert needle in str(ei.value)
