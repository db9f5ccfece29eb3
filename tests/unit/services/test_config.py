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
    ({"ranker_resources": {"ranker_node": 0}}, "amount of 'ranker_node' must be a positive number, got 0.0"),
    ({"ranker_resources": {"ranker_node": -1.0}}, "amount of 'ranker_node' must be a positive number, got -1.0"),
    ({"ranker_resources": {"ranker_node": float("nan")}}, "amount of 'ranker_node' must be a positive number, got nan"),
    ({"stage_resources": {" ": 1}}, "stage_resources: resource names must be non-empty, got {' ': 1.0}"),
    ({"ranker_resources": {"GPU": 1}}, "'GPU' is a Ray built-in resource"),
    ({"ranker_resources": {"ranker_node": 1}, "ranker_deployment": False},
     "ranker_resources ({'ranker_node': 1.0}) needs ranker_deployment true"),
])
def test_bad_config_fails_at_load_with_values(kwargs, needle):
    with pytest.raises(ValidationError) as ei:
        ServeConfig(**kwargs)
    assert needle in str(ei.value)


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_custom_resources_reach_the_replicas_ray_actor_options(layout):
    """What Ray schedules by: each deployment's ray_actor_options once the graph is materialised, as
    `serve.run` and `serve deploy` do; the ranker's own resources never leak onto the other
    deployments, which take stage_resources."""
    from ray.serve._private.build_app import build_app as materialise

    from recstream.settings import Settings
    from services.app import build_app

    cfg = ServeConfig(layout=layout, ranker_resources={"ranker_node": 1}, stage_resources={"serve_node": 0.5})
    opts = {d.name: d.ray_actor_options for d in materialise(build_app(Settings(), cfg), name="t").deployments}
    assert set(opts) == set(cfg.deployment_names)
    assert opts["ranker"]["resources"] == {"ranker_node": 1.0}
    assert opts["ranker"]["num_gpus"] == cfg.num_gpus and opts["ranker"]["num_cpus"] == cfg.num_cpus
    for name in set(opts) - {"ranker"}:
        assert opts[name]["resources"] == {"serve_node": 0.5}, name


def test_no_custom_resources_by_default():
    from ray.serve._private.build_app import build_app as materialise

    from recstream.settings import Settings
    from services.app import build_app

    deployments = materialise(build_app(Settings(), ServeConfig(layout="split")), name="t").deployments
    assert [d.ray_actor_options.get("resources") for d in deployments] == [None] * 4
