"""services/http.py through a real Ray Serve HTTP proxy (issue 9, defect 3 and 7's /docs): the
body limit holds for declared and streamed bodies, a per-deployment limit set in the replica's
constructor (as the recstream ingress does with ServeConfig.max_body_bytes) takes effect in the
copy of the app Ray Serve runs, 422s stay small, and /docs works under a route prefix."""

# No `from __future__ import annotations`: the route below is pickled into a Ray replica, where a
# string annotation would not resolve and FastAPI would read the body model as a query parameter.
import re

import httpx
import pytest

from services.api import RecommendRequest

pytestmark = pytest.mark.integration

LIMIT = 200_000


def test_body_limit_safe_422s_and_offline_docs_through_ray_serve(ray_serve):
    from fastapi import FastAPI
    from ray import serve

    from services.http import install_http_hardening, set_max_body_bytes

    api = FastAPI(title="hardening-check")
    install_http_hardening(api)  # the module default (1 MB); the replica narrows it below

    @serve.deployment(name="hardening-check", ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class Check:
        def __init__(self, max_body_bytes: int):
            set_max_body_bytes(max_body_bytes)

        @api.post("/v1/recommend")
        async def recommend(self, req: RecommendRequest) -> dict:
            return {"user_id": req.user_id, "k": req.k}

    serve.run(Check.bind(LIMIT), name="hardening-check", route_prefix="/hardening")
    try:
        with httpx.Client(base_url=f"{ray_serve}/hardening", timeout=60) as c:
            assert c.post("/v1/recommend", json={"user_id": " u1 ", "k": 3}).json() == {"user_id": "u1", "k": 3}

            declared = c.post("/v1/recommend", content=b" " * 1_000_000, headers={"content-type": "application/json"})
            assert declared.status_code == 413
            assert f"at most {LIMIT}" in declared.json()["detail"][0]["msg"]  # the replica's limit, not the default

            streamed = c.post("/v1/recommend", content=(b" " * 10_000 for _ in range(100)),
                              headers={"content-type": "application/json"})
            assert streamed.status_code == 413 and streamed.json()["detail"][0]["type"] == "body_too_large"

            big = c.post("/v1/recommend", json={"user_id": "x" * 150_000, "k": 3})
            assert big.status_code == 422 and len(big.content) < 1000
            assert big.json()["detail"][0]["loc"] == ["body", "user_id"]

            strict = c.post("/v1/recommend", json={"user_id": "u1", "k": True})
            assert strict.status_code == 422 and strict.json()["detail"][0]["loc"] == ["body", "k"]

            docs = c.get("/docs")
            assert docs.status_code == 200 and "https://" not in docs.text
            assets = re.findall(r"""['"](/hardening/docs/[^'"]+)['"]""", docs.text)
            assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
            for a in assets:
                r = httpx.get(f"{ray_serve}{a}", timeout=60)
                assert r.status_code == 200, a
            spec = httpx.get(f"{ray_serve}/hardening/docs/openapi-3.0.json", timeout=60).json()
            assert spec["openapi"] == "3.0.3" and "/v1/recommend" in spec["paths"]
    finally:
        serve.delete("hardening-check")
