"""Feast's online read with the registry resolved once: the serving path for user features.

`FeatureStore.get_online_features` resolves the feature references against the registry on every
call (a profile of the serving ingress: `FeatureView.from_proto` and `Path.stat` of the registry
file took a third of the read) and builds a response frame. A replica reads one feature view of
fixed features, so `OnlineRowReader` resolves the view, the online store and the repository config
once and then calls the online store's own `online_read` (Feast's code, the same keys and value
encoding as the SDK's read, for Redis and SQLite alike) per request.

What it gives up: a view re-applied with other features is seen only by a new reader (the replica
builds one at start; `refresh()` rebuilds it). The stream writes through the same definitions, so
that happens only with a new release of them.
"""

from __future__ import annotations

import math
from typing import Sequence

from features.feast_repo import FeatureRepo
from features.repo.definitions import USER_FEATURES, USER_VIEW


class OnlineRowReader:
    """Rows of one feature view by entity id, as `FeatureRepo.online_user_features` gives them.

    Args:
        repo: an applied repository.
        view: the feature view's name; join_key: its entity's join key (a string key).
        features: the features to read, in this order.
    """

    def __init__(self, repo: FeatureRepo, view: str = USER_VIEW, join_key: str = "user_id",
                 features: Sequence[str] = tuple(USER_FEATURES)):
        self.repo, self.view_name, self.join_key, self.features = repo, view, join_key, list(features)
        self.refresh()

    def refresh(self) -> None:
        """Resolve the view, the online store and the config (again)."""
        from feast.type_map import feast_value_type_to_python_type

        store = self.repo.store
        self.view = store.get_feature_view(self.view_name)
        self.online_store = store._get_provider().online_store
        self.config = store.config
        self._to_python = feast_value_type_to_python_type

    def rows(self, ids: Sequence[str]) -> list[dict[str, object] | None]:
        """One dict per id (feature name -> Python value, None where the row lacks it), or None
        when the store holds no row for the id."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=i)]) for i in ids]
        read = self.online_store.online_read(self.config, self.view, keys, self.features)
        out: list[dict[str, object] | None] = []
        for _, values in read:
            if not values:
                out.append(None)
                continue
            row = {f: self._value(values.get(f)) for f in self.features}
            out.append(None if all(v is None for v in row.values()) else row)
        return out

    def _value(self, proto) -> object:
        if proto is None or proto.WhichOneof("val") is None:
            return None
        v = self._to_python(proto)
        return None if isinstance(v, float) and math.isnan(v) else v
