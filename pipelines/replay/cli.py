"""`recstream replay ...` (heavy imports inside the commands; `replay bench` is benchmarks/commands.py's,
mounted here by the `recstream` command)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Offline A/B from the impression log: off-policy estimates with intervals, traffic replay.",
                         no_args_is_help=True, rich_markup_mode=None)


def _ms(x: Optional[str]) -> Optional[int]:
    """Epoch milliseconds, or an ISO-8601 time (UTC when it names no zone)."""
    if x is None:
        return None
    if x.isdigit():
        return int(x)
    try:
        t = datetime.fromisoformat(x)
    except ValueError:
        raise typer.BadParameter(f"{x!r} is neither epoch ms nor an ISO-8601 time") from None
    return int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def _ref(spec: str, option: str):
    """'ranker:VERSION' or 'VERSION' -> ModelRef."""
    from scoring.config import ModelRef

    name, _, version = spec.rpartition(":")
    if not version:
        raise typer.BadParameter(f"{option} {spec!r}: want [MODEL:]VERSION, e.g. ranker:20261202-0930")
    return ModelRef(name=name or "ranker", version=version)


_VARIANT_KEYS = ("retrieval", "coarse", "ranker", "cascade", "retrieval_weight", "coarse_weight", "ranker_weight")


def _variant(spec: str, impressions, scorers):
    """'NAME=BASE[,KEY=VALUE...]' -> VariantPolicy: logged variant BASE as served (versions,
    cascade, fusion read from the log), with the given stages' versions, cascade or fusion
    weights replaced (weights not given are FusionConfig's defaults: retrieval 0, coarse 0,
    ranker 1)."""
    from pydantic import ValidationError

    from pipelines.replay.policies import VariantPolicy
    from scoring.fusion import FusionConfig

    name, eq, rest = spec.partition("=")
    base, *pairs = rest.split(",")
    if not eq or not name or not base:
        raise typer.BadParameter(f"--variant {spec!r}: want NAME=VARIANT[,KEY=VALUE...], e.g. A=A or "
                                 "A-hcn=A,coarse_weight=0.5")
    kv = {}
    for pair in pairs:
        k, eq, v = pair.partition("=")
        if not eq or k not in _VARIANT_KEYS:
            raise typer.BadParameter(f"--variant {spec!r}: {pair!r} is not KEY=VALUE with KEY one of {_VARIANT_KEYS}")
        kv[k] = v
    # a bare version names the stage's default artefact (VariantPolicy's STAGE_MODELS)
    versions = {s: _ref(kv[s], "--variant") if ":" in kv[s] else kv[s]
                for s in ("retrieval", "coarse", "ranker") if s in kv}
    weights = {k: kv[k] for k in ("retrieval_weight", "coarse_weight", "ranker_weight") if k in kv}
    try:
        fusion = FusionConfig(**weights) if weights else None
        return VariantPolicy.from_log(name, impressions, base, scorers, versions=versions, fusion=fusion,
                                      cascade=kv.get("cascade"))
    except (ValidationError, ValueError) as e:
        raise typer.BadParameter(f"--variant {spec!r}: {e}") from e


def load_log(s, parquet: Optional[str], since_ms: Optional[int], until_ms: Optional[int], window_s: float):
    from tqdm import tqdm

    from pipelines.replay.data import read_kafka, read_parquet

    if parquet:
        return read_parquet(parquet).in_range(since_ms, until_ms)
    return read_kafka(s.kafka_bootstrap, s.impressions_topic, s.events_topic, since_ms, until_ms, window_s,
                      progress=lambda **kw: tqdm(unit="rec", **kw))


@app.command("run")
def run(out_dir: str = typer.Option("reports/replay", "--out", help="where report.{md,json} and the plots go"),
        candidate: list[str] = typer.Option([], help="NAME=[MODEL:]VERSION: a ranker version to evaluate by re-ranking "
                                                     "the logged support (repeatable)"),
        variant: list[str] = typer.Option([], help="NAME=VARIANT[,KEY=VALUE...]: a whole served variant to evaluate, "
                                                   "its versions, cascade and fusion as the log shows VARIANT served, "
                                                   "each KEY replacing one: retrieval|coarse|ranker=[MODEL:]VERSION, "
                                                   "cascade=retrieval|coarse|ranker, retrieval_weight|coarse_weight|"
                                                   "ranker_weight=W (another fusion). E.g. A=A (variant A's versions "
                                                   "on all traffic), A-hcn=A,coarse_weight=0.5 (A with another "
                                                   "fusion). Repeatable"),
        reproduce: bool = typer.Option(True, help="report served_order_reproduced_share: each request replayed with "
                                                  "the variant that served it, as the log shows it"),
        direct_model: Optional[str] = typer.Option(None, help="[MODEL:]VERSION of the ranker DR uses as its direct "
                                                              "model (default: the first candidate's)"),
        from_parquet: Optional[str] = typer.Option(None, help="read an exported log instead of Kafka"),
        since: Optional[str] = typer.Option(None, help="impressions from (epoch ms or ISO time)"),
        until: Optional[str] = typer.Option(None, help="impressions before (epoch ms or ISO time)"),
        window_s: float = typer.Option(3600.0, help="outcomes count within this many seconds of the impression"),
        reward_types: str = typer.Option("click,like,purchase", help="event types that count as an outcome"),
        clip: Optional[float] = typer.Option(None, help="clip importance weights at this value"),
        n_boot: int = typer.Option(500, help="bootstrap resamples"),
        seed: int = typer.Option(0, help="bootstrap seed"),
        artifacts_dir: Optional[str] = typer.Option(None, help="model artefacts root"),
        traffic_url: Optional[str] = typer.Option(None, help="also re-send the logged requests to this server"),
        traffic_variants: str = typer.Option("A,B", help="variants to replay to (X-Recstream-Replay header)"),
        rate_per_s: float = typer.Option(20.0, help="replayed requests per second at most"),
        max_in_flight: int = typer.Option(4, help="replayed requests outstanding at most"),
        k: int = typer.Option(10, help="cutoff of the traffic replay's ranking metrics")) -> None:
    """Evaluate candidate rankers against the logging policy (IPS, SNIPS, DR, DM with bootstrap
    intervals) and optionally replay the traffic to two variants; writes a Markdown report, JSON
    and PNG plots."""
    from tqdm import tqdm

    from pipelines.replay.policies import RankerPolicy, RankerScorers, VariantPolicy
    from pipelines.replay.report import TrafficResult, run_replay
    from pipelines.replay.traffic import replay_requests
    from features.model_store import artifacts_root
    from scoring.errors import ModelLoadError
    from recstream.settings import get_settings

    s = get_settings()
    root = str(artifacts_root(artifacts_dir))
    types = tuple(t.strip() for t in reward_types.split(",") if t.strip())
    rlog = load_log(s, from_parquet, _ms(since), _ms(until), window_s)
    typer.echo(f"{len(rlog.impressions)} impressions, {len(rlog.events)} events read; skipped {rlog.skipped}")
    scorers = RankerScorers(root)
    policies = []
    for spec in candidate:
        name, eq, ref = spec.partition("=")
        if not eq or not name:
            raise typer.BadParameter(f"--candidate {spec!r}: want NAME=[MODEL:]VERSION")
        policies.append(RankerPolicy(name, scorers.get(_ref(ref, "--candidate"))))
    policies += [_variant(spec, rlog.impressions, scorers) for spec in variant]
    if direct_model:
        dm = scorers.get(_ref(direct_model, "--direct-model"))
    elif policies and isinstance(policies[0], RankerPolicy):
        dm = policies[0].scorer
    elif policies:
        # a variant policy may need no artefacts at all (logs with stage scores): without its
        # ranker's, the report goes without DR rather than not at all
        ref = _served_ranker(policies[0], rlog.impressions)
        try:
            dm = scorers.get(ref)
        except ModelLoadError as e:
            typer.echo(f"DR's direct model unavailable ({e}): IPS and SNIPS only; pass --direct-model", err=True)
            dm = None
    else:
        dm = None
    served = None
    if reproduce:
        served = {v: VariantPolicy.from_log(f"{v} as served", rlog.impressions, v, scorers)
                  for v in sorted({i.variant for i in rlog.impressions})}
    traffic = None
    if traffic_url:
        variants = [v.strip() for v in traffic_variants.split(",") if v.strip()]
        answers = replay_requests(traffic_url, rlog.impressions, variants, rate_per_s, max_in_flight,
                                  progress=lambda **kw: tqdm(**kw))
        traffic = TrafficResult(variants, answers, k)
    res = run_replay(rlog, policies, out_dir, dm, window_s, types, clip, n_boot, seed, traffic,
                     progress=lambda xs, **kw: tqdm(xs, **kw), served=served)
    typer.echo((Path(out_dir) / "report.md").read_text())
    typer.echo(f"wrote {out_dir}/report.json, report.md and plots ({len(res['policies'])} policies)")


def _served_ranker(policy, impressions):
    """The ranker a VariantPolicy orders with (its own, else the one its base variant served)."""
    from scoring.config import ModelRef

    ref = policy.versions.get("ranker")
    if ref is not None:
        return ref
    served = [i.model_versions.get("ranker") for i in impressions if i.model_versions.get("ranker")]
    if not served:
        raise typer.BadParameter("no logged ranker version to use as DR's direct model: pass --direct-model")
    return ModelRef(name="ranker", version=max(set(served), key=served.count))


@app.command("export")
def export(out: str = typer.Option(..., "--out", help="parquet file to write"),
           since: Optional[str] = typer.Option(None, help="impressions from (epoch ms or ISO time)"),
           until: Optional[str] = typer.Option(None, help="impressions before (epoch ms or ISO time)"),
           window_s: float = typer.Option(3600.0, help="events up to this long after `until` come along")) -> None:
    """Copy impressions and the events that followed from Kafka into one parquet file."""
    from pipelines.replay.data import write_parquet
    from recstream.settings import get_settings

    rlog = load_log(get_settings(), None, _ms(since), _ms(until), window_s)
    write_parquet(out, rlog)
    typer.echo(f"wrote {out}: {len(rlog.impressions)} impressions, {len(rlog.events)} events")
