"""Training writes model artefacts through the model store, which serving reads too; it lives in
`features/model_store.py` because `services/` may not import `pipelines/`."""

from features.model_store import *  # noqa: F401,F403
from features.model_store import REPO_ROOT, _jsonable  # noqa: F401  (private names used by training)
