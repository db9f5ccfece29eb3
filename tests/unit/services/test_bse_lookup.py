"""BseLookup refuses a Redis Cluster without the partition count (no server needed)."""

import pytest

from services.bse_lookup import BseLookup


def test_a_cluster_url_without_partitions_is_refused_before_connecting():
    # the processors write a cluster in the partitioned layout only; single-layout reads would
    # find no user there and answer zero interest without an error
    with pytest.raises(ValueError, match=r"redis\+cluster://127.0.0.1:1.*needs partitions"):
        BseLookup("redis+cluster://127.0.0.1:1", "rs", {})
