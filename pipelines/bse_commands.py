"""`recstream bse ...`: maintenance commands for the BSE store (mounted by cli/main.py).

    recstream bse rebuild --model-version v7 --embeddings artifact:ranker/v7 [--users u1,u2]
    recstream bse stats --user u1 --model-version v7 --embeddings random:2000:0

Settings (redis_url, redis_prefix) come from recstream.settings.get_settings(). Tests inject a
store factory with `set_store_factory` (e.g. one returning an InMemoryBseStore).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import typer

app = typer.Typer(help="BSE store maintenance: rebuild tables for a ranker version, inspect a user.", no_args_is_help=True)

StoreFactory = Callable[[int], "object"]  # max_seq_len -> BseStore
_store_factory: Optional[StoreFactory] = None


def set_store_factory(factory: Optional[StoreFactory]) -> None:
    """Use `factory(max_seq_len) -> BseStore` instead of a RedisBseStore from settings (tests)."""
    global _store_factory
    _store_factory = factory


def _store(max_seq_len: int):
    if _store_factory is not None:
        return _store_factory(max_seq_len)
    from features.bse import RedisBseStore
    from features.keys import KeyLayout
    from recstream.settings import get_settings

    s = get_settings()
    return RedisBseStore.from_url(s.redis_url, prefix=s.redis_prefix, max_seq_len=max_seq_len,
                                  layout=KeyLayout.from_settings(s))


def _version(model_version: str, spec: str, item_bits: int):
    from pipelines.stream.bse_encoder import load_table_version

    try:  # the artefact's own hasher, as the bse-encoder's (see load_table_version)
        return load_table_version(spec, model_version, item_bits)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--embeddings") from None


def _split_users(users: Optional[list[str]]) -> Optional[list[str]]:
    if not users:
        return None
    out = [u.strip() for arg in users for u in arg.split(",") if u.strip()]
    return out or None


@app.command()
def rebuild(
    model_version: str = typer.Option(..., help="ranker version whose item embeddings feed the tables"),
    embeddings: str = typer.Option(..., help="random:<n_items>[:<seed>[:<dim>]] or artifact:<model>[/<version>]"),
    users: Optional[list[str]] = typer.Option(None, "--users", help="user ids (repeat or comma-separate); default: every user"),
    item_bits: int = typer.Option(7, help="quantisation width of the table version"),
    max_seq_len: int = typer.Option(10_000, help="sequence cap of the store"),
    batch_users: int = typer.Option(256, help="users per read/compute/write round"),
) -> None:
    """Recompute one version's SDIM tables from the stored sequences (a new ranker version deploys)."""
    from tqdm import tqdm

    version = _version(model_version, embeddings, item_bits)
    store = _store(max_seq_len)
    chosen = _split_users(users)
    todo: Iterable[str] = chosen if chosen is not None else list(store.users())
    todo = list(todo)
    totals = {"users": 0, "behaviours": 0, "retried": 0}
    with tqdm(total=len(todo), unit="user", desc=f"rebuild {model_version}") as bar:
        for k in range(0, len(todo), batch_users):
            chunk = todo[k : k + batch_users]
            res = store.rebuild(version.hasher, version.embeddings, chunk, model_version=model_version,
                                item_bits=item_bits, batch_users=batch_users)
            totals["users"] += res.n_users
            totals["behaviours"] += res.n_behaviours
            totals["retried"] += res.n_retried
            bar.update(len(chunk))
    typer.echo(f"version={version.name} users={totals['users']} behaviours={totals['behaviours']} retried={totals['retried']}")


@app.command()
def stats(
    user: str = typer.Option(..., help="user id"),
    model_version: str = typer.Option(..., help="ranker version of the table"),
    embeddings: str = typer.Option(..., help="random:<n_items>[:<seed>[:<dim>]] or artifact:<model>[/<version>]"),
    item_bits: int = typer.Option(7, help="quantisation width of the table version"),
) -> None:
    """Sequence length and table size of one user."""
    version = _version(model_version, embeddings, item_bits)
    store = _store(10_000)
    store.register_version(version, maintain=False)
    n = len(store.sequence(user))
    size = store.table_bytes(user, version)
    typer.echo(f"user={user} version={version.name} sequence_length={n} table_bytes={size}")

