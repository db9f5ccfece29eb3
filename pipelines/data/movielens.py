"""MovieLens-100k, read from the `recbole` wheel (it ships `dataset_example/ml-100k`), and the
evaluation protocols defined on it.

The wheel is downloaded with pip into the cache on first use; the data is never committed.
Ratings become time-ordered `rating` events whose ids are deterministic, so re-producing the
dataset is idempotent downstream.

Evaluation protocols (`PROTOCOLS`, chosen by name; `DEFAULT_PROTOCOL` everywhere unless a job
names another). Both are leave-last-out per user: the last interaction is the test target, the one
before it the validation target, the rest train; the full catalogue is ranked. They differ in
what "last" and "before" mean when a user rated several films in the same second (44% of test
users did):

- "standard" (the default; RecBole's and most published ML-100k results'): interactions in a
  stable sort by timestamp, so same-second ties keep the file's order; a sample's history is
  every interaction of the user before it in that order (same-second ones included), and the
  ranking masks exactly that history: the user's train items for a validation target, train +
  validation items for a test target. The history is also what a live service holds after the
  stream applied the training interactions (they are produced in this order).
- "strict_time" (this project's protocol before issue 13, kept for comparison): ties ordered by
  (user_id, item_id) compared as strings, so the "last" item of a same-second burst is the one
  with the largest id as text; a sample's history, and the mask, hold only interactions strictly
  earlier in time, so same-second training items stay in the ranking as candidates.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pandas as pd

from recstream.errors import RecstreamError
from recstream.events import Event, EventType
from recstream.settings import get_settings

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


class DatasetUnavailable(RecstreamError):
    def __init__(self, name: str, detail: str):
        super().__init__(f"dataset {name!r} unavailable: {detail}")


def fetch_ml100k(cache_dir: Path | None = None) -> Path:
    """Return a directory holding ml-100k.{inter,item,user}, downloading the wheel if needed."""
    cache_dir = Path(cache_dir or get_settings().cache_dir)
    out = cache_dir / "datasets" / "ml-100k"
    if all((out / f).exists() for f in _FILES):
        return out
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = next(iter(sorted(wheels.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))), None)
    if wheel is None:
        log.info("downloading recbole==%s wheel into %s", RECBOLE_VERSION, wheels)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
               f"recbole=={RECBOLE_VERSION}"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        except FileNotFoundError as e:  # pragma: no cover - pip always exists in our venv
            raise DatasetUnavailable("ml-100k", "pip is not available to download recbole") from e
        except subprocess.CalledProcessError as e:
            raise DatasetUnavailable("ml-100k", f"pip download recbole failed: {e.stderr.strip()[-500:]}") from e
        wheel = next(iter(sorted(wheels.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))))
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for f in _FILES:
            tmp = out / (f + ".tmp")
            tmp.write_bytes(zf.read(_MEMBER_DIR + f))
            tmp.rename(out / f)  # atomic: a half-written file never looks complete
    return out


@dataclass(frozen=True)
class EvalProtocol:
    """How the leave-last-out split orders ties and what a sample's history (and mask) holds.

    Args:
        name: the short name reports carry (`ml100k_protocol`).
        tie_order: "file": same-timestamp interactions keep their order in the source file;
            "ids_as_text": ordered by (user_id, item_id) compared as strings.
        history: "position": everything before the sample in that order; "strictly_before":
            only interactions with an earlier timestamp. Retrieval evaluation masks the history.
    """

    name: str
    tie_order: Literal["file", "ids_as_text"]
    history: Literal["position", "strictly_before"]
    description: str


PROTOCOLS: dict[str, EvalProtocol] = {
    "standard": EvalProtocol("standard", "file", "position",
                             "leave-last-out, stable time order with ties in file order, full ranking with the "
                             "user's train (+ validation, for test) items masked"),
    "strict_time": EvalProtocol("strict_time", "ids_as_text", "strictly_before",
                                "leave-last-out, ties ordered by (user_id, item_id) as strings, history and mask "
                                "only strictly earlier in time (recstream before issue 13)"),
}
DEFAULT_PROTOCOL = "standard"


def get_protocol(name: str) -> EvalProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol ({name!r}) must be one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def order_interactions(interactions: pd.DataFrame, protocol: str = DEFAULT_PROTOCOL) -> pd.DataFrame:
    """The interactions in the protocol's time order (stable: a frame already in it is unchanged).

    "file" ties keep the frame's own order, so pass the frame in source-file order (as
    load_ml100k returns it) for the standard protocol.
    """
    keys = ["ts_ms"] if get_protocol(protocol).tie_order == "file" else ["ts_ms", "user_id", "item_id"]
    return interactions.sort_values(keys, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Ml100k:
    # user_id:str, item_id:str, rating:float, ts_ms:int; sorted by ts_ms, ties in file order
    interactions: pd.DataFrame
    items: pd.DataFrame  # item_id:str, title:str, year:str, genres:str (space separated)
    users: pd.DataFrame  # user_id:str, age:int, gender:str, occupation:str, zip_code:str


def _read_atomic(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def load_ml100k(cache_dir: Path | None = None) -> Ml100k:
    d = fetch_ml100k(cache_dir)
    inter = _read_atomic(d / "ml-100k.inter")
    inter = pd.DataFrame({
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
        "rating": inter["rating"].astype(float),
        "ts_ms": (inter["timestamp"].astype(float) * 1000).astype("int64"),
    })
    # Ties keep file order (the standard protocol's order); the stream is produced in it too, so a
    # live service's histories are the standard protocol's histories.
    inter = order_interactions(inter, "standard")
    items = _read_atomic(d / "ml-100k.item").rename(columns={"movie_title": "title", "release_year": "year", "class": "genres"})
    users = _read_atomic(d / "ml-100k.user")
    users["age"] = users["age"].astype(int)
    return Ml100k(interactions=inter, items=items, users=users)


Ml100kSplit = Literal["all", "train", "valid", "test", "train_valid"]
SPLITS: tuple[str, ...] = ("all", "train", "valid", "test", "train_valid")


def leave_last_out(interactions: pd.DataFrame) -> np.ndarray:
    """Per interaction (in the frame's order, which must be a protocol's time order, see
    order_interactions): 0 = the user's last interaction (test), 1 = the one before (valid),
    >= 2 = train. The one definition of the ML-100k split, used by the dataset builders and by
    ml100k_events."""
    return interactions.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()


def split_mask(interactions: pd.DataFrame, split: Ml100kSplit) -> np.ndarray:
    """Boolean mask of the interactions in `split` ("train_valid" = all but each user's last)."""
    if split not in SPLITS:
        raise ValueError(f"split ({split!r}) must be one of {SPLITS}")
    from_end = leave_last_out(interactions)
    return {"all": np.ones(len(from_end), dtype=bool), "train": from_end >= 2, "valid": from_end == 1,
            "test": from_end == 0, "train_valid": from_end >= 1}[split]


def event_id(user_id: str, item_id: str, ts_ms: int) -> str:
    return f"ml100k-{user_id}-{item_id}-{ts_ms}"


def ml100k_events(cache_dir: Path | None = None, limit: int | None = None,
                  split: Ml100kSplit = "all") -> Iterator[Event]:
    """Ratings as time-ordered `rating` events with deterministic event ids.

    Args:
        split: which interactions of the leave-last-out split: "train_valid" produces exactly the
            training interactions (all but each user's last), "test" the held-out ones.
        limit: at most this many events, the earliest of the split.
    """
    data = load_ml100k(cache_dir)
    df = data.interactions[split_mask(data.interactions, split)] if split != "all" else data.interactions
    if limit is not None:
        df = df.head(limit)
    for u, i, r, ts in zip(df["user_id"], df["item_id"], df["rating"], df["ts_ms"]):
        yield Event(event_id=event_id(u, i, ts), user_id=u, item_id=i, type=EventType.rating, ts=int(ts), value=float(r))
