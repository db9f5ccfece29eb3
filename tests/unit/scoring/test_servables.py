"""The servables' precomputed and batched paths against a straightforward reference: the model's own
`score_user` / `interests` + `item_vectors` + `score` on each request alone, inputs built here."""

import numpy as np
import pytest
import torch

from features.model_store import save_artifact
from features.vectors import ITEM_VECTOR_NAMES, USER_VECTOR_NAMES
from models import CtrRanker, RankerConfig, SdimConfig
from models.sdim import sdim_interest_from_tables
from models.sdim_hash import SdimHasher
from scoring.config import ModelRef
from scoring.servables import CoarseServable, RankerRequest, RankerServable
from tests.serving_fixtures import save_stage_models, vocabs

torch.set_num_threads(1)

FEATS = {"n_user_feats": len(USER_VECTOR_NAMES), "n_item_feats": len(ITEM_VECTOR_NAMES)}
FEATURE_VECTORS = {"user_vector_names": list(USER_VECTOR_NAMES), "item_vector_names": list(ITEM_VECTOR_NAMES),
                   "source": "test"}
RANKERS = {"v1": {}, "listwise": {"listwise": True}, "none": {"long_term": "none", "short_len": 50},
           "attention": {"long_term": "attention"}, "collision": {"long_term": "collision"},
           "no_user_id": {"use_user_id": False}, "features": {**FEATS, "listwise": True}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    for seed, (version, overrides) in enumerate(RANKERS.items()):
        if version == "none":  # the registry's DIN-only baseline fixes short_len, which save_stage_models sets
            _save_ranker(root, version, seed, overrides)
            continue
        feats = version == "features"
        save_stage_models(root, version=version, seed=seed, ranker_overrides=overrides,
                          hcn_overrides=FEATS if feats else None, feature_vectors=FEATURE_VECTORS if feats else None)
    return root


def _save_ranker(root, version: str, seed: int, overrides: dict) -> None:
    torch.manual_seed(seed)
    voc = vocabs(50, 300)
    model = CtrRanker(RankerConfig(n_users=voc["user"].size, n_items=voc["item"].size, n_item_cats=voc["item_cat"].size,
                                   dim=16, long_len=100, din_hidden=(16,), mlp_hidden=(32,),
                                   sdim=SdimConfig(dim=16, n_hashes=12, tau=3), **overrides))
    model.set_item_categories(torch.as_tensor(np.r_[0, np.arange(300) % 4 + 1, np.zeros(voc["item"].n_oov_buckets)], dtype=torch.long))
    save_artifact("ranker", version, model.eval(), model.config, voc, {}, {"test": True}, root=root)


def _padded(rows: np.ndarray, length: int) -> torch.Tensor:
    """(1, length) right-aligned, 0-padded: the layout the models were trained on."""
    out = np.zeros(length, dtype=np.int64)
    tail = rows[-length:]
    out[length - len(tail):] = tail
    return torch.as_tensor(out)[None, :]


def _request(rng, c, user: str, n_hist: int, n_items: int, with_tables: bool = True) -> RankerRequest:
    hist = [f"i{k}" for k in rng.integers(0, 300, n_hist)]
    items = [f"i{k}" for k in rng.integers(0, 300, n_items)] + ["never-seen"]  # an OOV row too
    tables = rng.standard_normal((c.sdim.n_signatures, c.sdim.n_buckets, c.dim)).astype(np.float32) if with_tables else None
    uf = rng.random((1, c.n_user_feats)).astype(np.float32) if c.n_user_feats else None
    itf = rng.random((len(items), c.n_item_feats)).astype(np.float32) if c.n_item_feats else None
    return RankerRequest(user, hist, items, tables, uf, itf)


def _reference(rk: RankerServable, r: RankerRequest) -> tuple[np.ndarray, np.ndarray]:
    """The model's own score_user on one request, with the SDIM interest from the tables in numpy."""
    m, c, voc = rk.model, rk.model.config, rk.vocabs
    rows = voc["item"].encode(r.items)
    long = None
    if c.long_term == "sdim":
        sigs = SdimHasher(c.sdim).signatures_np(m.item_embedding_table()[rows])
        long = (torch.zeros(len(rows), c.dim) if r.tables is None
                else torch.as_tensor(sdim_interest_from_tables(r.tables, sigs), dtype=torch.float32))
    hist_len = c.long_len if c.long_term == "attention" else c.short_len
    as_t = lambda x: None if x is None else torch.as_tensor(x)  # noqa: E731
    with torch.no_grad():
        order, like = m.score_user(torch.tensor([voc["user"].index(r.user_id)]), _padded(voc["item"].encode(r.hist), hist_len),
                                   torch.as_tensor(rows), long_interest=long, user_feats=as_t(r.user_feats),
                                   item_feats=as_t(r.item_feats), head="both")
    return order.numpy(), torch.sigmoid(rk.like_scale * like + rk.like_bias).numpy()


@pytest.mark.parametrize("version", list(RANKERS))
def test_ranker_scores_equal_the_models_own_score_user(root, version):
    rk = RankerServable(ModelRef(name="ranker", version=version), str(root))
    rk.like_scale, rk.like_bias = 1.7, -0.4  # a fitted calibration, so the probability's formula is checked too
    rng = np.random.default_rng(1)
    for r in (_request(rng, rk.model.config, "u3", 40, 25), _request(rng, rk.model.config, "u4", 5, 9, with_tables=False)):
        order, prob = rk.score_heads(r.user_id, r.hist, r.items, r.tables, r.user_feats, r.item_feats)
        want_order, want_prob = _reference(rk, r)
        np.testing.assert_allclose(order, want_order, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prob, want_prob, atol=1e-5, rtol=0)
        assert np.argsort(-order, kind="stable").tolist() == np.argsort(-want_order, kind="stable").tolist()


@pytest.mark.parametrize("version", ["v1", "listwise", "attention", "features"])
def test_a_batch_gives_each_request_the_scores_it_gets_alone(root, version):
    rk = RankerServable(ModelRef(name="ranker", version=version), str(root))
    c = rk.model.config
    rng = np.random.default_rng(2)
    reqs = [_request(rng, c, "u1", 30, 40), _request(rng, c, "u2", 3, 0, with_tables=False),  # one candidate (OOV only)
            _request(rng, c, "new-user", 0, 17), _request(rng, c, "u1", 60, 5, with_tables=False),
            RankerRequest("u5", ["i1"], [], None, *(((rng.random((1, c.n_user_feats)).astype(np.float32),
                                                      np.zeros((0, c.n_item_feats), np.float32))) if c.n_user_feats
                                                    else (None, None)))]  # no candidates at all
    batched = rk.score_heads_batch(reqs)
    assert [len(o) for o, _ in batched] == [len(r.items) for r in reqs]
    for r, (order, prob) in zip(reqs, batched):
        alone_order, alone_prob = rk.score_heads_batch([r])[0]
        want_order, want_prob = _reference(rk, r)
        for got, want in ((order, alone_order), (prob, alone_prob), (order, want_order), (prob, want_prob)):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_a_request_that_does_not_fit_the_model_is_named(root):
    rk = RankerServable(ModelRef(name="ranker", version="v1"), str(root))
    rng = np.random.default_rng(3)
    good = _request(rng, rk.model.config, "u1", 10, 5)
    bad = RankerRequest("u2", [], ["i1"], np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"request 1: tables of shape \(2, 2, 2\)"):
        rk.score_heads_batch([good, bad])
    feats = RankerServable(ModelRef(name="ranker", version="features"), str(root))
    with pytest.raises(ValueError, match=r"request 0: ranker features uses user_feats of shape \(1, "):
        feats.score_heads_batch([RankerRequest("u1", [], ["i1"], None, None, np.zeros((1, FEATS["n_item_feats"])))])


@pytest.mark.parametrize("version", ["v1", "features"])
def test_coarse_scores_equal_the_models_own_towers(root, version):
    hcn = CoarseServable(ModelRef(name="hcn", version=version), str(root))
    m, c, voc = hcn.model, hcn.model.config, hcn.vocabs
    assert (hcn.item_table is None) == (c.n_item_feats > 0)  # the table only where vectors depend on the item alone
    rng = np.random.default_rng(4)
    hist = [f"i{k}" for k in rng.integers(0, 300, 45)]
    items = [f"i{k}" for k in rng.permutation(300)[:120]] + ["never-seen", "also-new"]
    uf = rng.random((1, c.n_user_feats)).astype(np.float32) if c.n_user_feats else None
    itf = rng.random((len(items), c.n_item_feats)).astype(np.float32) if c.n_item_feats else None
    got = hcn.score("u7", hist, items, uf, itf)
    batch = {"user": torch.tensor([voc["user"].index("u7")]), "hist": _padded(voc["item"].encode(hist), c.long_len)}
    if uf is not None:
        batch["user_feats"] = torch.as_tensor(uf)
    with torch.no_grad():
        v = m.item_vectors(torch.as_tensor(voc["item"].encode(items)), None if itf is None else torch.as_tensor(itf))
        want = m.score(m.interests(batch)[0], v)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.argsort(-got)[:20].tolist() == np.argsort(-want)[:20].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here; the same code runs on CPU above")
def test_the_batched_ranker_on_cuda_equals_cpu(root):
    cpu = RankerServable(ModelRef(name="ranker", version="listwise"), str(root))
    gpu = RankerServable(ModelRef(name="ranker", version="listwise"), str(root), device="cuda")
    rng = np.random.default_rng(5)
    reqs = [_request(rng, cpu.model.config, f"u{i}", 20, 10 + i, with_tables=i % 2 == 0) for i in range(4)]
    for (o1, p1), (o2, p2) in zip(cpu.score_heads_batch(reqs), gpu.score_heads_batch(reqs)):
        np.testing.assert_allclose(o1, o2, atol=1e-4, rtol=0)
        np.testing.assert_allclose(p1, p2, atol=1e-4, rtol=0)
