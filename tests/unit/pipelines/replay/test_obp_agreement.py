"""The estimators agree with a second implementation: the Open Bandit Pipeline (obp 0.5.7).

obp is a test-only dependency. Its release pins Python < 3.11 and 2022-era numpy/pandas, so it
is installed without its pins (`--no-deps --ignore-requires-python`, with the few libraries its
estimators import) into a cache directory and run in a subprocess, on the same logged arrays.
Its estimators import and run on the numpy this project uses (checked by this test).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.replay import estimators as E
from pipelines.replay.simulator import SimConfig, Simulator

# every package pinned (installed with --no-deps): a new joblib, threadpoolctl or narwhals release cannot change the run
OBP = ["obp==0.5.7", "scikit-learn==1.9.1", "scipy==1.17.1", "joblib==1.6.0", "threadpoolctl==3.8.0", "narwhals==2.29.0",
       "seaborn==0.13.2"]

OBP_SCRIPT = r"""
import json, sys
import numpy as np
from obp.ope import (DoublyRobust, InverseProbabilityWeighting, SelfNormalizedSlateIndependentIPS,
                     SlateIndependentIPS)
d = np.load(sys.argv[1])
L = int(d["L"])
sid, pos, r, p0, pe = d["impression"], d["position"], d["reward"], d["pscore"], d["target_pscore"]
out = {
    "ips": SlateIndependentIPS(len_list=L).estimate_policy_value(
        slate_id=sid, reward=r, position=pos, pscore_item_position=p0, evaluation_policy_pscore_item_position=pe),
    "snips": SelfNormalizedSlateIndependentIPS(len_list=L).estimate_policy_value(
        slate_id=sid, reward=r, position=pos, pscore_item_position=p0, evaluation_policy_pscore_item_position=pe),
}
# DR and IPS per slot as bandits: rounds are (impression, slot), actions the support items
n_rows, M = len(r), d["action_dist"].shape[1]
dr = DoublyRobust().estimate_policy_value(
    reward=r, action=d["action"], position=pos, pscore=p0, action_dist=d["action_dist"],
    estimated_rewards_by_reg_model=d["q"])
ips = InverseProbabilityWeighting().estimate_policy_value(
    reward=r, action=d["action"], position=pos, pscore=p0, action_dist=d["action_dist"])
out["dr_per_row"], out["ips_per_row"] = dr, ips
print(json.dumps({k: float(v) for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def obp_path() -> Path:
    home = Path(os.environ.get("RECSTREAM_HOME", Path.home() / ".cache" / "recstream"))
    target = home / "cache" / "obp-0.5.7"
    stamp = target / ".complete"
    if not stamp.exists():
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(target),
               "--no-deps", "--ignore-requires-python", "--upgrade", *OBP]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"installing obp for the cross-check failed:\n{res.stderr[-2000:]}"
        stamp.write_text(" ".join(OBP))
    return target


def test_estimators_agree_with_obp(obp_path, tmp_path):
    sim = Simulator(SimConfig(n_users=200, n_items=60, k=4, pool_size=6, seed=9))
    target = sim.policy(0.5)
    lg = sim.log(3000, seed=2)
    rows = lg.rows(target)
    n_rows, k, m = len(rows.reward), sim.config.k, sim.config.support_size
    u = lg.users[rows.impression]
    # obp's bandit form: per (impression, slot) round, the evaluated policy's distribution over the
    # support items at that slot, and the direct model's prediction for each of them
    action_dist = target[u].transpose(0, 2, 1)  # (N, M, k); obp reads each row's own slot
    theta = rows.dm_logged / sim.dm_rel[u, lg.support_index]  # (N,) the fitted curve at the row's slot
    q = np.repeat((theta[:, None] * sim.dm_rel[u])[:, :, None], k, axis=2)  # (N, M, k)
    np.savez(tmp_path / "log.npz", L=k, impression=rows.impression, position=rows.position, reward=rows.reward,
             pscore=rows.pscore, target_pscore=rows.target_pscore, action=lg.support_index, action_dist=action_dist, q=q)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(obp_path), *sys.path]), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "-c", OBP_SCRIPT, str(tmp_path / "log.npz")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    obp = json.loads(res.stdout.strip().splitlines()[-1])
    n = rows.n_impressions
    assert E.terms(rows, "ips").value() == pytest.approx(obp["ips"], rel=1e-9)
    assert E.terms(rows, "snips").value() == pytest.approx(obp["snips"], rel=1e-9)
    # obp averages over rows (impression, slot); ours sums slots per impression
    assert E.terms(rows, "ips").value() == pytest.approx(obp["ips_per_row"] * n_rows / n, rel=1e-9)
    assert E.terms(rows, "dr").value() == pytest.approx(obp["dr_per_row"] * n_rows / n, rel=1e-9)
