"""One way to open a Redis client from Settings.redis_url, single server or Redis Cluster.

`redis://`, `rediss://` and `unix://` URLs open a `redis.Redis`; `redis+cluster://host:port[,host:port]`
(`rediss+cluster://` with TLS) opens a `redis.cluster.RedisCluster` seeded with those nodes (it
discovers the rest). A cluster client refuses commands whose keys span hash slots, and a
transactional pipeline must stay in one slot: the stream processors' keys carry a per-partition
hash tag for that (features/keys.py KeyLayout).
"""

from __future__ import annotations


import redis
from redis.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a `redis+cluster://h:p[,h:p]` URL.

    Raises:
        ValueError: naming the URL, when a node is not host:port or the URL has a path/query.
    """
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"{url!r} is not a Redis Cluster URL ({' or '.join(s + '://' for s in CLUSTER_SCHEMES)})")
    hosts = rest.rstrip("/")
    if not hosts or any(c in hosts for c in "/?#@"):
        raise ValueError(f"Redis Cluster URL {url!r} must be {scheme}://host:port[,host:port] (no database, "
                         "path, query or credentials: a cluster has one database; pass credentials by environment)")
    out = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"Redis Cluster URL {url!r}: node {hp!r} must be host:port")
        out.append((host, int(port)))
    return out


def redis_client(url: str, **kwargs) -> redis.Redis | RedisCluster:
    """A client for `url` (see the module docstring); kwargs go to the client (decode_responses,
    socket_timeout, ...)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **kwargs)
    nodes = [ClusterNode(h, p) for h, p in cluster_nodes(url)]
    if url.startswith("rediss+"):
        kwargs.setdefault("ssl", True)
    return RedisCluster(startup_nodes=nodes, **kwargs)


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)
