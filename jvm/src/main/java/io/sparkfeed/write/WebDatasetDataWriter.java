package io.sparkfeed.write;

import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import io.sparkfeed.DatasetDir;
import io.sparkfeed.WebDatasetOptions;
import io.sparkfeed.manifest.ArrowTypes;
import io.sparkfeed.manifest.ColumnStats;
import io.sparkfeed.manifest.ShardInfo;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.connector.write.DataWriter;
import org.apache.spark.sql.connector.write.WriterCommitMessage;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * Writes the rows of one task into tar shards of at most {@code samplesPerShard} samples and
 * about {@code maxShardBytes} bytes, each with its DALI index.
 *
 * <p>Commit protocol, task side: shards are written under
 * {@code _temporary/<jobId>/task-<taskId>/} with their final names
 * {@code part-<partition>-<shard>.tar} (+ {@code .idx}), which depend on the partition only, never
 * on the attempt. {@link #commit} moves them into the dataset root, or, when the job overwrites,
 * into its staging directory {@code _temporary/<jobId>/committed/} (the old dataset stays whole
 * until the job commits), replacing what an earlier attempt of the same partition may have
 * left; {@link #abort} deletes the task directory. The driver writes the manifest after all
 * tasks committed.
 *
 * <p>Only what reaches the tar counts: a row whose every member is null writes nothing (a tar
 * sample exists only through its members), so it is counted as left out and adds nothing to the
 * shard's stats (a null_count above the shard's samples would make the loader take a column for
 * all-null and prune samples that hold values). The key column's stats are those of the keys as
 * written (sanitised), which is what readers deliver and filter on. A key may appear once per
 * shard: readers group a tar's members by key, and a key in two places is one sample split in
 * two (webdataset) or a tar that sparkfeed's reader refuses. Each shard's key hashes go to the
 * driver in the commit message ({@link KeyDigest}), which refuses a key in two shards.
 */
public final class WebDatasetDataWriter implements DataWriter<InternalRow> {
    private static final int BUFFER_BYTES = 1 << 20;

    private final WebDatasetOptions options;
    private final SampleLayout layout;
    private final DatasetDir dir;
    private final Path taskDir;
    private final Path commitDir;
    private final int partitionId;
    private final long mtimeMillis;
    private final SampleEncoder encoder;
    private final KeyPolicy keys;
    private final String keyColumn;
    private final int keyOrdinal;
    private final List<ShardInfo> shards = new ArrayList<>();
    private final StringBuilder generated = new StringBuilder();

    private TarShardWriter tar;
    private ColumnStats[] stats;
    private ColumnStats.Text keyStats;
    private final Map<String, Long> shardKeys = new HashMap<>();
    private final List<long[]> keyHashes = new ArrayList<>();
    private KeyDigest digest;
    private String shardName;
    private long rowIndex;
    private long rowsWithoutMembers;

    WebDatasetDataWriter(WebDatasetOptions options, SampleLayout layout, Configuration conf,
                         String jobId, int partitionId, long taskId, long mtimeMillis,
                         boolean staged) {
        this.options = options;
        this.layout = layout;
        this.partitionId = partitionId;
        this.mtimeMillis = mtimeMillis;
        try {
            this.dir = DatasetDir.of(options.path, conf);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot open dataset path " + options.path, e);
        }
        this.taskDir = new Path(new Path(dir.child(DatasetDir.TEMPORARY), jobId), "task-" + taskId);
        this.commitDir = staged ? dir.staging(jobId) : dir.root;
        this.encoder = new SampleEncoder(layout);
        this.keys = new KeyPolicy(options.sanitizeKeys);
        this.keyColumn = layout.keyColumn();
        this.keyOrdinal = layout.keyOrdinal();
    }

    @Override
    public void write(InternalRow row) throws IOException {
        String key = keyOrdinal >= 0
            ? keys.apply(row.isNullAt(keyOrdinal) ? null : row.getUTF8String(keyOrdinal).toString(),
                         keyColumn)
            : generatedKey(rowIndex);
        if (tar == null) {
            openShard();
        }
        long before = tar.samples();
        encoder.write(row, key, tar);
        if (tar.samples() == before) {
            rowsWithoutMembers++;   // every member null: nothing written, nothing counted
        } else {
            account(row, key);
        }
        rowIndex++;
        if (tar.samples() >= options.samplesPerShard || tar.bytes() >= options.maxShardBytes) {
            closeShard();
        }
    }

    /** Adds a written sample to the shard's stats; a key already in this shard fails the task. */
    private void account(InternalRow row, String key) {
        if (keyStats != null) {
            Long first = shardKeys.putIfAbsent(key, rowIndex);
            if (first != null) {
                throw new IllegalArgumentException("duplicate sample key \"" + key + "\" in column \""
                    + keyColumn + "\" (partition " + partitionId + ", rows " + first + " and "
                    + rowIndex + ", shard " + shardName + "): a key may appear once per shard, "
                    + "since readers group a tar's members by key; make the keys unique, or drop "
                    + "the key column to have keys generated"
                    + (options.sanitizeKeys ? " (invalidKeys=sanitize replaced '.', '/', '\\', "
                    + "whitespace and control characters by '_', so distinct keys such as "
                    + "\"a.b\" and \"a b\" can become this one)" : ""));
            }
            keyStats.add(UTF8String.fromString(key));
            digest.add(key);
        }
        for (ColumnStats s : stats) {
            s.update(row);
        }
    }

    /** p&lt;partition, 5 digits&gt;_&lt;row in partition, 9 digits&gt;: stable across attempts. */
    private String generatedKey(long row) {
        generated.setLength(0);
        generated.append('p');
        pad(generated, partitionId, 5);
        generated.append('_');
        pad(generated, row, 9);
        return generated.toString();
    }

    private static void pad(StringBuilder out, long value, int width) {
        String digits = Long.toString(value);
        for (int i = digits.length(); i < width; i++) out.append('0');
        out.append(digits);
    }

    static String shardName(int partitionId, int shardIndex) {
        return String.format(Locale.ROOT, "part-%05d-%04d.tar", partitionId, shardIndex);
    }

    private void openShard() throws IOException {
        shardName = shardName(partitionId, shards.size());
        OutputStream out = new BufferedOutputStream(
            dir.createInTask(new Path(taskDir, shardName), BUFFER_BYTES), BUFFER_BYTES);
        tar = new TarShardWriter(out, mtimeMillis);
        List<ColumnStats> list = new ArrayList<>();
        for (SampleLayout.Member m : layout.members()) {
            if (m.kind != SampleLayout.Kind.KEY && ArrowTypes.hasStats(m.type)) {
                list.add(ColumnStats.forColumn(m.type, m.ordinal));
            }
        }
        stats = list.toArray(new ColumnStats[0]);
        keyStats = keyOrdinal >= 0 ? ColumnStats.forKeys() : null;
        digest = keyOrdinal >= 0 ? KeyDigest.create() : null;
        shardKeys.clear();
    }

    private void closeShard() throws IOException {
        tar.finish();
        String index = shardName + ".idx";
        try (OutputStream out = dir.createInTask(new Path(taskDir, index), BUFFER_BYTES)) {
            out.write(tar.indexText().getBytes(StandardCharsets.UTF_8));
        }
        Map<String, Map<String, Object>> summary = new LinkedHashMap<>();
        int k = 0;
        for (SampleLayout.Member m : layout.members()) {
            if (m.kind == SampleLayout.Kind.KEY) {
                summary.put(m.column, keyStats.summary());
            } else if (ArrowTypes.hasStats(m.type)) {
                summary.put(m.column, stats[k++].summary());
            }
        }
        shards.add(new ShardInfo(shardName, tar.samples(), tar.bytes(),
            new ArrayList<>(tar.extensions()), summary, index));
        if (digest != null) {
            keyHashes.add(digest.sorted());
            digest = null;
        }
        tar = null;
        shardKeys.clear();
    }

    @Override
    public WriterCommitMessage commit() throws IOException {
        if (tar != null) {
            closeShard();
        }
        for (ShardInfo shard : shards) {
            dir.moveReplacing(new Path(taskDir, shard.path()), new Path(commitDir, shard.path()));
            dir.moveReplacing(new Path(taskDir, shard.index()), new Path(commitDir, shard.index()));
        }
        dir.fs.delete(taskDir, true);
        return new ShardCommitMessage(partitionId, shards, rowsWithoutMembers,
            keyOrdinal >= 0 ? keyHashes : null);
    }

    @Override
    public void abort() throws IOException {
        closeQuietly();
        dir.deleteTaskDirectory(taskDir);
    }

    @Override
    public void close() {
        closeQuietly();
    }

    private void closeQuietly() {
        if (tar != null) {
            try {
                tar.close();
            } catch (IOException ignored) {
                // the shard is being discarded
            }
            tar = null;
        }
    }
}
