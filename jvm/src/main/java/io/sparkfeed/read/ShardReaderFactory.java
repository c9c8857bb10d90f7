package io.sparkfeed.read;

import java.util.ArrayList;
import java.util.List;

import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.connector.read.InputPartition;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.connector.read.PartitionReaderFactory;
import org.apache.spark.util.SerializableConfiguration;

/** Opens a {@link ShardPartitionReader} per shard on the executors. */
public final class ShardReaderFactory implements PartitionReaderFactory {
    private static final long serialVersionUID = 1L;

    private final ArrayList<ReadColumn> columns;
    private final SerializableConfiguration conf;

    ShardReaderFactory(List<ReadColumn> columns, Configuration conf) {
        this.columns = new ArrayList<>(columns);
        this.conf = new SerializableConfiguration(conf);
    }

    @Override
    public PartitionReader<InternalRow> createReader(InputPartition partition) {
        return new ShardPartitionReader((ShardInputPartition) partition, columns, conf.value());
    }
}
