"""How many shards `cluster_by` asks for (`writeshards.clustered_shards`): ceil(rows / per shard)
while Spark samples every row (up to 1e6), a few more above, never above 30% more."""

import math

from sparkfeed.writeshards import RANGE_SAMPLE_POINTS, clustered_shards


def test_every_row_sampled_gives_ceil():
    assert clustered_shards(0, 10) == 1
    assert clustered_shards(5000, 777) == 7
    assert clustered_shards(RANGE_SAMPLE_POINTS, 10_000) == 100


def test_above_the_sample_shards_get_room_for_its_error():
    rows, per = 10_000_000, 10_000
    n = math.ceil(rows / per)
    got = clustered_shards(rows, per)
    margin = 3 * math.sqrt(n / RANGE_SAMPLE_POINTS)  # three standard deviations of a partition
    assert got == math.ceil(rows / (per * (1 - margin)))
    assert rows / got <= per * (1 - margin) + 1
    assert clustered_shards(10 ** 9, 1) <= math.ceil(10 ** 9 / 0.7)  # the cap
