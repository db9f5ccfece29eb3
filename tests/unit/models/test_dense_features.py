"""Dense stream features in the ranker and HCN, and the one-user serving paths (score_user,
interests + item_vectors + score) against the batch forward."""

import numpy as np
import pytest
import torch

from models import build_model
from models.layers import DinAttention
from models.sdim import build_bucket_tables, sdim_interest_from_tables
from models.sdim_hash import SdimConfig, SdimHasher

torch.set_num_threads(1)

FU, FI = 5, 4
RANKER = {"n_users": 6, "n_items": 40, "n_item_cats": 4, "dim": 16, "sdim": SdimConfig(dim=16), "long_len": 30,
          "short_len": 8, "mlp_hidden": (32,)}
HCN = {"n_users": 6, "n_items": 40, "n_item_cats": 4, "dim": 16, "long_len": 30, "short_len": 8}


def _model(name, cfg, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, cfg)
    m.set_item_categories(torch.arange(cfg["n_items"]) % cfg["n_item_cats"])
    return m.eval()


def _hist(n_pad=7, length=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(1, 40, (1, length), generator=g)
    h[:, :n_pad] = 0  # right-aligned: padding on the left
    return h


@pytest.mark.parametrize("name", ["ranker", "hcn"])
def test_zero_features_keeps_parameters_and_old_checkpoints(name):
    base = RANKER if name == "ranker" else HCN
    old, new = _model(name, base), _model(name, {**base, "n_user_feats": 0, "n_item_feats": 0})
    assert list(old.state_dict()) == list(new.state_dict())
    for k, v in old.state_dict().items():
        torch.testing.assert_close(new.state_dict()[k], v, rtol=0, atol=0)
    with_feats = _model(name, {**base, "n_user_feats": FU, "n_item_feats": FI})
    # an old checkpoint's tensors all exist, with their shapes, except the layers the features widen
    widened = {k for k, v in old.state_dict().items() if with_feats.state_dict()[k].shape != v.shape}
    assert widened <= {"cross.layers.0.weight", "cross.layers.0.bias", "cross.layers.1.weight", "cross.layers.1.bias",
                       "cross.layers.2.weight", "cross.layers.2.bias", "mlp.0.weight", "head.weight", "item_mlp.0.weight"}


def test_din_split_first_layer_equals_concatenation():
    torch.manual_seed(0)
    din = DinAttention(16, (12, 6)).eval()
    q, k = torch.randn(9, 16), torch.randn(13, 16)
    mask = torch.rand(13) > 0.3
    want = din(q, k.expand(9, -1, -1), mask.expand(9, -1))
    torch.testing.assert_close(din.forward_shared_keys(q, k, mask), want, rtol=1e-5, atol=1e-6)
    none = torch.zeros(13, dtype=torch.bool)
    torch.testing.assert_close(din.forward_shared_keys(q, k, none), torch.zeros(9, 16))


@pytest.mark.parametrize("long_term", ["sdim", "attention", "none"])
@pytest.mark.parametrize("feats", [False, True])
def test_score_user_equals_forward_on_broadcast_batch(long_term, feats):
    cfg = {**RANKER, "long_term": long_term, **({"n_user_feats": FU, "n_item_feats": FI} if feats else {})}
    ranker = _model("ranker", cfg)
    hist, items, user = _hist(), torch.arange(1, 40), torch.tensor([3])
    m = len(items)
    uf, itf = torch.randn(1, FU), torch.randn(m, FI)
    batch = {"user": user.expand(m), "item": items, "hist": hist.expand(m, -1)}
    kwargs = {}
    if feats:
        batch.update(user_feats=uf.expand(m, -1), item_feats=itf)
        kwargs = {"user_feats": uf, "item_feats": itf}
    with torch.no_grad():
        want = ranker(batch)["logit"]
        got = ranker.score_user(user, hist, items, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_score_user_with_bse_table_interest_equals_forward():
    ranker = _model("ranker", {**RANKER, "n_user_feats": FU, "n_item_feats": FI})
    hist, items, user = _hist(n_pad=0), torch.arange(1, 40), torch.tensor([2])
    m = len(items)
    table = ranker.item_embedding_table()  # what the BSE hashes
    hasher = SdimHasher(ranker.config.sdim)
    tables, _ = build_bucket_tables(table[hist[0].numpy()], hasher)
    long = sdim_interest_from_tables(torch.from_numpy(tables), hasher.signatures_np(table[items.numpy()]))  # (M, d)
    uf, itf = torch.randn(1, FU), torch.randn(m, FI)
    batch = {"user": user.expand(m), "item": items, "hist": hist.expand(m, -1), "long_interest": long,
             "user_feats": uf.expand(m, -1), "item_feats": itf}
    with torch.no_grad():
        want = ranker(batch)["logit"]
        got = ranker.score_user(user, hist, items, long_interest=long, user_feats=uf, item_feats=itf)
        computed = ranker.score_user(user, hist, items, user_feats=uf, item_feats=itf)  # tables from the history
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(computed, want, rtol=1e-5, atol=1e-5)


def test_features_change_the_ranker_score_and_are_required():
    ranker = _model("ranker", {**RANKER, "n_user_feats": FU, "n_item_feats": FI})
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4]), "hist": _hist().expand(2, -1),
             "user_feats": torch.zeros(2, FU), "item_feats": torch.zeros(2, FI)}
    with torch.no_grad():
        a = ranker(batch)["logit"]
        b = ranker({**batch, "item_feats": torch.ones(2, FI)})["logit"]
    assert not torch.allclose(a, b)
    with pytest.raises(KeyError, match="item_feats"):
        ranker({k: v for k, v in batch.items() if k != "item_feats"})
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        ranker({**batch, "user_feats": torch.zeros(2, 3)})


@pytest.mark.parametrize("feats", [False, True])
def test_hcn_one_user_scoring_equals_forward_path(feats):
    cfg = {**HCN, **({"n_user_feats": FU, "n_item_feats": FI} if feats else {})}
    hcn = _model("hcn", cfg)
    hist, user, items = _hist(), torch.tensor([4]), torch.arange(1, 40)
    m = len(items)
    uf, itf = torch.randn(1, FU), torch.randn(m, FI)
    one = {"user": user, "hist": hist, **({"user_feats": uf} if feats else {})}
    with torch.no_grad():
        u, _ = hcn.interests(one)  # (1, K, d), once per request
        v = hcn.item_vectors(items, itf if feats else None)  # (M, d)
        served = hcn.score(u, v)[0]  # (M,)
        # the training path: the same user repeated against each item in a batch
        batch = {"user": user.expand(m), "hist": hist.expand(m, -1), "item": items,
                 **({"user_feats": uf.expand(m, -1), "item_feats": itf} if feats else {})}
        u_b, _ = hcn.interests(batch)
        diag = hcn.score(u_b, hcn.item_vectors(items, batch.get("item_feats"))).diagonal()
        out = hcn(batch)  # forward runs on the same inputs
        catalogue = hcn.score_catalogue(one, items, itf if feats else None)[0]
    torch.testing.assert_close(served, diag, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(catalogue, served, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(out["loss"])
    if feats:
        with pytest.raises(KeyError, match="item_feats"):
            hcn.item_vectors(items)
        with torch.no_grad():
            moved = hcn.score(hcn.interests({**one, "user_feats": uf + 3})[0], v)[0]
        assert not torch.allclose(moved, served)  # user features reach the gate


def test_dense_feature_models_train_one_step():
    torch.manual_seed(0)
    for name, cfg in (("ranker", RANKER), ("hcn", HCN)):
        model = build_model(name, {**cfg, "n_user_feats": FU, "n_item_feats": FI}).train()
        b = {"user": torch.randint(1, 6, (8,)), "item": torch.randint(1, 40, (8,)), "hist": _hist().expand(8, -1),
             "label": torch.randint(0, 2, (8,)).float(), "user_feats": torch.randn(8, FU), "item_feats": torch.randn(8, FI)}
        model(b)["loss"].backward()
        proj = model.user_feat_proj.weight.grad
        assert proj is not None and np.isfinite(proj.numpy()).all() and proj.abs().sum() > 0, name
