package io.sparkfeed.write;

import java.util.Collections;
import java.util.List;

import io.sparkfeed.manifest.ShardInfo;
import org.apache.spark.sql.connector.write.WriterCommitMessage;

/** What one committed task wrote: its shards, already moved to their final names. */
public final class ShardCommitMessage implements WriterCommitMessage {
    private static final long serialVersionUID = 1L;

    private final int partitionId;
    private final List<ShardInfo> shards;

    ShardCommitMessage(int partitionId, List<ShardInfo> shards) {
        this.partitionId = partitionId;
        this.shards = Collections.unmodifiableList(shards);
    }

    public int partitionId() {
        return partitionId;
    }

    public List<ShardInfo> shards() {
        return shards;
    }
}
