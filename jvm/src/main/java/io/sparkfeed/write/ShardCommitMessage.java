package io.sparkfeed.write;

import java.util.Collections;
import java.util.List;

import io.sparkfeed.manifest.ShardInfo;
import org.apache.spark.sql.connector.write.WriterCommitMessage;

/**
 * What one committed task wrote: its shards, already moved to their final names, and how many of
 * its rows had every member null and so wrote nothing.
 */
public final class ShardCommitMessage implements WriterCommitMessage {
    private static final long serialVersionUID = 1L;

    private final int partitionId;
    private final List<ShardInfo> shards;
    private final long rowsWithoutMembers;

    ShardCommitMessage(int partitionId, List<ShardInfo> shards, long rowsWithoutMembers) {
        this.partitionId = partitionId;
        this.shards = Collections.unmodifiableList(shards);
        this.rowsWithoutMembers = rowsWithoutMembers;
    }

    public long rowsWithoutMembers() {
        return rowsWithoutMembers;
    }

    public int partitionId() {
        return partitionId;
    }

    public List<ShardInfo> shards() {
        return shards;
    }
}
