"""The Feast feature repository: definitions are built in code (paths come from settings at apply
time), and `features.feast_repo.apply_repo` writes a matching feature_store.yaml beside them."""

from features.repo.definitions import (
    ITEM_FEATURES,
    ITEM_PUSH_SOURCE,
    ITEM_VIEW,
    PROJECT,
    USER_FEATURES,
    USER_PUSH_SOURCE,
    USER_VIEW,
    build_definitions,
)

__all__ = [
    "ITEM_FEATURES",
    "ITEM_PUSH_SOURCE",
    "ITEM_VIEW",
    "PROJECT",
    "USER_FEATURES",
    "USER_PUSH_SOURCE",
    "USER_VIEW",
    "build_definitions",
]
