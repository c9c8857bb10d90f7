package io.sparkfeed.read;

import org.apache.spark.sql.connector.read.InputPartition;

/** One tar shard: one Spark input partition. */
public final class ShardInputPartition implements InputPartition {
    private static final long serialVersionUID = 1L;

    public final String path;

    public ShardInputPartition(String path) {
        this.path = path;
    }
}
