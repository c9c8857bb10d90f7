package io.sparkfeed.read;

import java.util.List;

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

    WebDatasetScan(List<ReadColumn> columns, List<String> shards, Configuration conf) {
        this.columns = columns;
        this.shards = shards;
        this.conf = conf;
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
        InputPartition[] out = new InputPartition[shards.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = new ShardInputPartition(shards.get(i));
        }
        return out;
    }

    @Override
    public PartitionReaderFactory createReaderFactory() {
        return new ShardReaderFactory(columns, conf);
    }
}
