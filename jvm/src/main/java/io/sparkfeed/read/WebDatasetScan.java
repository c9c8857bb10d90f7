package io.sparkfeed.read;

import java.io.IOException;
import java.util.List;

import io.sparkfeed.DatasetDir;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.connector.read.Batch;
import org.apache.spark.sql.connector.read.InputPartition;
import org.apache.spark.sql.connector.read.PartitionReaderFactory;
import org.apache.spark.sql.connector.read.Scan;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/** A batch scan of the shards: one input partition per shard. */
public final class WebDatasetScan implements Scan, Batch {
    private final List<ReadColumn> columns;
    private final List<String> shards;
    private final Configuration conf;
    private final String dataset;

    WebDatasetScan(List<ReadColumn> columns, List<String> shards, Configuration conf,
                   String dataset) {
        this.columns = columns;
        this.shards = shards;
        this.conf = conf;
        this.dataset = dataset;
    }

    /** The Spark schema of these columns (all nullable: a sample may lack a member). */
    public static StructType schemaOf(List<ReadColumn> columns) {
        StructField[] fields = new StructField[columns.size()];
        for (int i = 0; i < fields.length; i++) {
            fields[i] = DataTypes.createStructField(columns.get(i).name, columns.get(i).type, true);
        }
        return DataTypes.createStructType(fields);
    }

    @Override
    public StructType readSchema() {
        return schemaOf(columns);
    }

    @Override
    public String description() {
        return "webdataset scan of " + shards.size() + " shards";
    }

    @Override
    public Batch toBatch() {
        return this;
    }

    @Override
    public InputPartition[] planInputPartitions() {
        String root = root();
        InputPartition[] out = new InputPartition[shards.size()];
        for (int i = 0; i < out.length; i++) {
            String shard = shards.get(i);
            String name = root != null && shard.startsWith(root) ? shard.substring(root.length())
                : shard;
            out[i] = new ShardInputPartition(shard, dataset, name);
        }
        return out;
    }

    /** The qualified dataset root with a trailing "/" (the shards' paths start with it), or
     * null where there is no dataset path. */
    private String root() {
        if (dataset == null) {
            return null;
        }
        try {
            String root = DatasetDir.of(dataset, conf).root.toString();
            return root.endsWith("/") ? root : root + "/";
        } catch (IOException | RuntimeException e) {
            return null;  // only names in errors: the full shard paths are named instead
        }
    }

    @Override
    public PartitionReaderFactory createReaderFactory() {
        return new ShardReaderFactory(columns, conf);
    }
}
