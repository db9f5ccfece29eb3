import pytest
from pydantic import ValidationError

from services.config import ServeConfig


def test_defaults_are_valid():
    c = ServeConfig()
    assert c.layout == "fused" and 0 < c.num_cpus < 1 and c.num_gpus == 0


@pytest.mark.parametrize("kwargs,needle", [
    ({"variants": {"A": 0.5, "B": 0.4}}, "sum 0.9"),
    ({"variants": {}}, "at least one variant"),
    ({"popular_pool_size": 10, "max_k": 20}, "popular_pool_size (10) must be >= max_k (20)"),
    ({"layout": "mesh"}, "layout"),
    ({"timeout": 3}, "timeout"),
])
def test_bad_config_fails_at_load_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        ServeConfig(**kwargs)
    assert needle in str(ei.value)
