"""Apply the Feast repository and read/write it.

`apply_repo` writes feature_store.yaml for the chosen online store (Redis for the stack and
production, SQLite for unit tests) into a working directory, creates the offline parquet files,
and applies the definitions of `features.repo`. Writers push rolling features with
`push_user_features` / `push_item_features` (online and offline in one call); training reads
point-in-time-correct rows with `historical_features`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import FeatureRepoError, FeatureViewMissing
from features.repo.definitions import (
    ITEM_FEATURES,
    ITEM_PUSH_SOURCE,
    ITEM_VIEW,
    PROJECT,
    TIMESTAMP_FIELD,
    USER_FEATURES,
    USER_PUSH_SOURCE,
    USER_VIEW,
    build_definitions,
    item,
    user,
)

log = logging.getLogger(__name__)

OnlineKind = Literal["redis", "sqlite"]

_ROW = "__recstream_row"  # row id carried through Feast's join to restore order and dropped rows
_VIEW_OF_PUSH_SOURCE = {USER_PUSH_SOURCE: USER_VIEW, ITEM_PUSH_SOURCE: ITEM_VIEW}
_ARROW = {"Int64": pa.int64(), "Float32": pa.float32(), "String": pa.string()}


def feast_redis_connection_string(redis_url: str) -> str:
    """redis://[:password@]host:port/db -> Feast's "host:port,db=N[,password=...][,ssl=true]";
    redis+cluster://h:p[,h:p] -> its cluster form "h:p,h:p[,ssl=true]" (redis_type redis_cluster)."""
    from recstream.redis_io import cluster_nodes, is_cluster_url

    if is_cluster_url(redis_url):
        try:
            nodes = [f"{h}:{p}" for h, p in cluster_nodes(redis_url)]
        except ValueError as e:
            raise FeatureRepoError("-", str(e)) from None
        return ",".join(nodes + (["ssl=true"] if redis_url.startswith("rediss+") else []))
    u = urlparse(redis_url)
    if u.scheme not in ("redis", "rediss"):
        raise FeatureRepoError("-", f"redis_url {redis_url!r}: Feast's Redis store needs redis:// or rediss://")
    parts = [f"{u.hostname or '127.0.0.1'}:{u.port or 6379}", f"db={(u.path or '/0').lstrip('/') or 0}"]
    if u.password:
        parts.append(f"password={unquote(u.password)}")
    if u.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


# How Feast encodes entity keys (feature_store.yaml); its Redis key names depend on it.
ENTITY_KEY_SERIALIZATION_VERSION = 3


def project_for_prefix(redis_prefix: str) -> str:
    """The Feast project of a deployment: one per Redis prefix (see repo_for_settings)."""
    return f"recstream_{redis_prefix}".replace("-", "_")


def online_key_heads() -> tuple[bytes, ...]:
    """How the Redis keys of Feast's online rows begin, one per entity (users, items).

    Feast's Redis online store names a row `<serialised entity key><project>` (feast's
    `_redis_key`), the same in its `redis` and `redis_cluster` modes; the serialised key starts
    with the join key's name, and Feast itself scans a view's rows by this head and the project.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key_prefix

    return tuple(serialize_entity_key_prefix([e.join_key], ENTITY_KEY_SERIALIZATION_VERSION) for e in (user, item))


def write_feature_store_yaml(
    repo_dir: Path,
    online: OnlineKind = "sqlite",
    redis_url: str | None = None,
    project: str = PROJECT,
) -> Path:
    """Write repo_dir/feature_store.yaml for `online` and return its path."""
    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    if online == "redis":
        if not redis_url:
            raise FeatureRepoError(str(repo_dir), "online='redis' needs redis_url")
        # skip_dedup: our writers push absolute values computed from exactly-once counters, and an
        # entity's counts can change without its latest event time moving (a late event on another
        # partition); Feast's default check would drop such a row as "not newer".
        from recstream.redis_io import is_cluster_url

        online_yaml = (f"  type: redis\n  connection_string: \"{feast_redis_connection_string(redis_url)}\"\n"
                       f"  skip_dedup: true\n")
        if is_cluster_url(redis_url):  # Feast's own cluster client (its keys are per entity, never multi-slot)
            online_yaml += "  redis_type: redis_cluster\n"
    elif online == "sqlite":
        online_yaml = f"  type: sqlite\n  path: {repo_dir / 'online.db'}\n"
    else:
        raise FeatureRepoError(str(repo_dir), f"online store {online!r} must be 'redis' or 'sqlite'")
    text = (
        f"project: {project}\n"
        f"provider: local\n"
        f"registry: {repo_dir / 'registry.db'}\n"
        f"online_store:\n{online_yaml}"
        f"offline_store:\n  type: file\n"
        f"entity_key_serialization_version: {ENTITY_KEY_SERIALIZATION_VERSION}\n"
    )
    path = repo_dir / "feature_store.yaml"
    path.write_text(text)
    return path


def _ensure_parquet(path: Path, join_key: str, features: dict[str, object]) -> None:
    """An empty file with the view's schema, so offline pushes append and joins see the columns."""
    if path.exists():
        return
    fields = [pa.field(join_key, pa.string()), pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC"))]
    fields += [pa.field(n, _ARROW[str(t)]) for n, t in features.items()]
    schema = pa.schema(fields)
    pq.write_table(schema.empty_table(), path)


@dataclass
class FeatureRepo:
    """An applied Feast repository: the FeatureStore plus typed push/read helpers."""

    store: object  # feast.FeatureStore (kept untyped here so importing this module stays light)
    repo_dir: Path
    online: OnlineKind

    @property
    def project(self) -> str:
        return self.store.project

    # ---- writes -------------------------------------------------------------------------------

    def push_user_features(self, df: pd.DataFrame, offline: bool = True, online: bool = True) -> None:
        """Push user rows (columns: user_id, event_timestamp, and USER_FEATURES) to the stores asked for."""
        self._push(USER_PUSH_SOURCE, df, "user_id", USER_FEATURES, offline, online)

    def push_item_features(self, df: pd.DataFrame, offline: bool = True, online: bool = True) -> None:
        """Push item rows (columns: item_id, event_timestamp, and ITEM_FEATURES) to the stores asked for."""
        self._push(ITEM_PUSH_SOURCE, df, "item_id", ITEM_FEATURES, offline, online)

    def _push(self, source: str, df: pd.DataFrame, key: str, features: dict, offline: bool, online: bool = True) -> None:
        from feast.data_source import PushMode

        missing = [c for c in (key, TIMESTAMP_FIELD, *features) if c not in df.columns]
        if missing:
            raise FeatureRepoError(str(self.repo_dir), f"push to {source!r}: missing columns {missing}")
        # a filtered frame's index would reach Feast as an extra "__index_level_0__" column
        out = df[[key, TIMESTAMP_FIELD, *features]].reset_index(drop=True)
        out[TIMESTAMP_FIELD] = pd.to_datetime(out[TIMESTAMP_FIELD], utc=True)
        for n, t in features.items():
            if str(t) == "Int64":
                out[n] = out[n].astype("int64")
            elif str(t) == "Float32":
                out[n] = out[n].astype("float32")
        if not (online or offline):
            raise FeatureRepoError(str(self.repo_dir), f"push to {source!r}: neither online nor offline asked for")
        if online and not offline:
            # Straight to the view: push() looks the push source's views up in the registry on
            # every call (about 6 ms here), which a publisher calling twice per cycle pays often.
            self.store.write_to_online_store(_VIEW_OF_PUSH_SOURCE[source], out)
            return
        mode = PushMode.ONLINE_AND_OFFLINE if online and offline else PushMode.OFFLINE
        self.store.push(source, out, to=mode)

    # ---- reads --------------------------------------------------------------------------------

    def online_user_features(self, user_ids: Sequence[str], features: Sequence[str] | None = None) -> pd.DataFrame:
        """Returns: DataFrame (len(user_ids) rows, user_id + features); missing users get nulls."""
        return self._online(USER_VIEW, "user_id", user_ids, features or list(USER_FEATURES))

    def online_item_features(self, item_ids: Sequence[str], features: Sequence[str] | None = None) -> pd.DataFrame:
        """Returns: DataFrame (len(item_ids) rows, item_id + features); missing items get nulls."""
        return self._online(ITEM_VIEW, "item_id", item_ids, features or list(ITEM_FEATURES))

    def _online(self, view: str, key: str, ids: Sequence[str], features: Sequence[str]) -> pd.DataFrame:
        self._require_view(view)
        resp = self.store.get_online_features(
            features=[f"{view}:{f}" for f in features], entity_rows=[{key: i} for i in ids]
        )
        return resp.to_df()

    def historical_features(
        self,
        entity_df: pd.DataFrame,
        user_features: Sequence[str] | None = None,
        item_features: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Point-in-time join for training sets: each row gets the features as of its own
        event_timestamp (the latest pushed value at or before it; the views have no TTL, like
        the online stores), never later values.

        Args:
            entity_df: columns event_timestamp and user_id and/or item_id (plus any labels).
            user_features / item_features: names to join; None = all for the keys present.
        Returns:
            entity_df's rows, in order, with feature columns (null where no value existed yet).
        """
        refs: list[str] = []
        if "user_id" in entity_df.columns:
            refs += [f"{USER_VIEW}:{f}" for f in (user_features if user_features is not None else USER_FEATURES)]
        if "item_id" in entity_df.columns:
            refs += [f"{ITEM_VIEW}:{f}" for f in (item_features if item_features is not None else ITEM_FEATURES)]
        df = entity_df.reset_index(drop=True).copy()
        df[TIMESTAMP_FIELD] = pd.to_datetime(df[TIMESTAMP_FIELD], utc=True)
        df[_ROW] = np.arange(len(df), dtype=np.int64)
        joined = self.store.get_historical_features(entity_df=df, features=refs).to_df()
        # Feast 0.67's file offline store drops entity rows that have no feature row at or
        # before their timestamp; a training set must keep them (with nulls), in input order.
        feats = joined[[_ROW, *[r.split(":", 1)[1] for r in refs]]]
        out = df.merge(feats, on=_ROW, how="left").sort_values(_ROW)
        return out.drop(columns=_ROW).reset_index(drop=True)

    def _require_view(self, view: str) -> None:
        from feast.errors import FeatureViewNotFoundException

        try:
            self.store.get_feature_view(view)
        except FeatureViewNotFoundException as e:
            raise FeatureViewMissing(view, self.project) from e


def apply_repo(
    repo_dir: str | Path,
    online: OnlineKind = "sqlite",
    redis_conn: str | None = None,
    project: str = PROJECT,
) -> FeatureRepo:
    """Write feature_store.yaml, create the offline parquet files and apply the definitions.

    Args:
        repo_dir: working directory for the yaml, the registry, offline parquet (data/) and the
            SQLite online DB (e.g. Settings.home / "feast").
        online: "redis" (stack, production) or "sqlite" (unit tests).
        redis_conn: Redis URL (redis://host:port/db) when online="redis"; Settings.redis_url.
        project: Feast project name (letters, digits, underscores).
    Returns:
        FeatureRepo wrapping the FeatureStore.
    """
    from feast import FeatureStore

    repo_dir = Path(repo_dir).resolve()
    data_dir = repo_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_feature_store_yaml(repo_dir, online, redis_conn, project)
    _ensure_parquet(data_dir / "user_stats.parquet", "user_id", USER_FEATURES)
    _ensure_parquet(data_dir / "item_stats.parquet", "item_id", ITEM_FEATURES)
    try:
        store = FeatureStore(repo_path=str(repo_dir))
        store.apply(build_definitions(data_dir))
    except Exception as e:  # feast raises many unrelated types; name the repo and chain the cause
        raise FeatureRepoError(str(repo_dir), f"apply failed: {e}") from e
    log.info("feast repo applied: %s (online=%s, project=%s)", repo_dir, online, project)
    return FeatureRepo(store=store, repo_dir=repo_dir, online=online)


def open_repo(repo_dir: str | Path) -> FeatureRepo:
    """Open an already-applied repository (no apply)."""
    from feast import FeatureStore

    repo_dir = Path(repo_dir).resolve()
    if not (repo_dir / "feature_store.yaml").exists():
        raise FeatureRepoError(str(repo_dir), "no feature_store.yaml; run apply_repo first")
    store = FeatureStore(repo_path=str(repo_dir))
    online = "redis" if store.config.online_store.type == "redis" else "sqlite"
    return FeatureRepo(store=store, repo_dir=repo_dir, online=online)


def push_user_features(repo: FeatureRepo, df: pd.DataFrame, offline: bool = True) -> None:
    """Module-level alias of FeatureRepo.push_user_features."""
    repo.push_user_features(df, offline=offline)


def push_item_features(repo: FeatureRepo, df: pd.DataFrame, offline: bool = True) -> None:
    """Module-level alias of FeatureRepo.push_item_features."""
    repo.push_item_features(df, offline=offline)


def repo_for_settings(settings) -> FeatureRepo:
    """Apply (idempotently) the repository of a deployment: Redis online store at settings.redis_url,
    working directory `<home>/feast/<redis_prefix>`, one Feast project per Redis prefix so that
    several deployments (or test runs) can share a Redis without seeing each other's rows."""
    project = project_for_prefix(settings.redis_prefix)
    return apply_repo(Path(settings.home) / "feast" / settings.redis_prefix, online="redis",
                      redis_conn=settings.redis_url, project=project)
