package io.sparkfeed.write;

import java.util.Collections;
import java.util.List;

import io.sparkfeed.manifest.ShardInfo;
import org.apache.spark.sql.connector.write.WriterCommitMessage;

/**
 * What one committed task wrote: its shards, already moved to their final names, how many of
 * its rows had every member null and so wrote nothing, and its shards' key hashes.
 */
public final class ShardCommitMessage implements WriterCommitMessage {
    private static final long serialVersionUID = 1L;

    private final int partitionId;
    private final List<ShardInfo> shards;
    private final long rowsWithoutMembers;
    private final List<long[]> keyHashes;

    /** @param keyHashes per shard, its sample keys' {@link KeyDigest} hashes, sorted; null when
     *                  keys are generated (unique by construction) */
    ShardCommitMessage(int partitionId, List<ShardInfo> shards, long rowsWithoutMembers,
                       List<long[]> keyHashes) {
        this.partitionId = partitionId;
        this.shards = Collections.unmodifiableList(shards);
        this.rowsWithoutMembers = rowsWithoutMembers;
        this.keyHashes = keyHashes;
    }

    public List<long[]> keyHashes() {
        return keyHashes;
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
