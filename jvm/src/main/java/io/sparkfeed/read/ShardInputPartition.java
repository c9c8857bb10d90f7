package io.sparkfeed.read;

import org.apache.spark.sql.connector.read.InputPartition;

/** One tar shard: one Spark input partition. */
public final class ShardInputPartition implements InputPartition {
    private static final long serialVersionUID = 1L;

    public final String path;
    /** The dataset as given to load(path), for errors (null: unknown). */
    public final String dataset;
    /** The shard's path inside the dataset (its full path outside it), for errors. */
    public final String name;

    public ShardInputPartition(String path) {
        this(path, null, path);
    }

    public ShardInputPartition(String path, String dataset, String name) {
        this.path = path;
        this.dataset = dataset;
        this.name = name;
    }
}
