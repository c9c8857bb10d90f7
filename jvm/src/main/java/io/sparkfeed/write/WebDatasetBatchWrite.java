package io.sparkfeed.write;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import io.sparkfeed.DatasetDir;
import io.sparkfeed.WebDatasetOptions;
import io.sparkfeed.WebDatasetSource;
import io.sparkfeed.manifest.ManifestWriter;
import io.sparkfeed.manifest.ShardInfo;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.connector.write.BatchWrite;
import org.apache.spark.sql.connector.write.DataWriterFactory;
import org.apache.spark.sql.connector.write.PhysicalWriteInfo;
import org.apache.spark.sql.connector.write.WriterCommitMessage;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The driver side of a webdataset write.
 *
 * <ol>
 *   <li>Before the tasks run ({@link #createBatchWriterFactory}): without overwrite the path must
 *       not hold a dataset; with overwrite of a path that holds something (it is "staged") the
 *       old dataset is left whole (readable, and there
 *       again if the job fails) and the job's staging directory is made.</li>
 *   <li>Tasks write and commit their shards (see {@link WebDatasetDataWriter}): into the root,
 *       or, staged, into the staging directory; Spark's commit coordinator lets one
 *       attempt per partition commit.</li>
 *   <li>{@link #commit} receives the messages of the committed attempts only, deletes any shard
 *       file they do not name (left by an attempt that died while committing), fails when a
 *       shard they name is not in the driver's listing (the executors wrote where the driver
 *       does not see) or not of the size its task wrote, or a key is in two shards. Only then,
 *       staged, is the old dataset deleted (its manifest first) and the staged shards
 *       moved into the root. It deletes the temporary directory and writes
 *       {@code _sparkfeed.json} last, atomically.</li>
 *   <li>{@link #abort} deletes the temporary directory; where the root holds no manifest (no
 *       old dataset, or a commit that failed after deleting it) also every shard, so a failed
 *       job leaves the old dataset as it was, or no manifest and no visible shard.</li>
 * </ol>
 */
public final class WebDatasetBatchWrite implements BatchWrite {
    private static final Logger LOG = LoggerFactory.getLogger(WebDatasetBatchWrite.class);

    private final WebDatasetOptions options;
    private final SampleLayout layout;
    private final Configuration conf;
    private final String jobId;
    private final boolean truncate;
    /** Overwriting a path that holds something: tasks commit into the staging directory. */
    private boolean staged;

    WebDatasetBatchWrite(WebDatasetOptions options, SampleLayout layout, Configuration conf,
                         String jobId, boolean truncate) {
        this.options = options;
        this.layout = layout;
        this.conf = conf;
        this.jobId = jobId;
        this.truncate = truncate;
    }

    private DatasetDir dir() {
        try {
            return DatasetDir.of(options.path, conf);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot open dataset path " + options.path, e);
        }
    }

    @Override
    public DataWriterFactory createBatchWriterFactory(PhysicalWriteInfo info) {
        DatasetDir dir = dir();
        try {
            if (truncate && dir.fs.exists(dir.root) && dir.fs.getFileStatus(dir.root).isFile()) {
                dir.fs.delete(dir.root, false);   // a file, no dataset: nothing to keep
            } else if (truncate && dir.exists()) {
                staged = true;
                dir.fs.mkdirs(dir.staging(jobId));
            } else if (truncate) {
                dir.fs.delete(dir.root, true);   // hidden leftovers only (_temporary, .x): no dataset
            } else if (dir.exists()) {
                throw WebDatasetWriteBuilder.existsError(dir.root.toString());
            }
            dir.fs.mkdirs(dir.root);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot prepare " + dir.root + " for writing", e);
        }
        return new WebDatasetWriterFactory(options, layout, conf, jobId, System.currentTimeMillis(),
            staged);
    }

    @Override
    public void commit(WriterCommitMessage[] messages) {
        DatasetDir dir = dir();
        DatasetDir written = staged ? DatasetDir.on(dir.fs, dir.staging(jobId)) : dir;
        List<ShardInfo> shards = new ArrayList<>();
        Set<String> committed = new HashSet<>();
        List<long[]> keyHashes = new ArrayList<>();
        long withoutMembers = 0;
        for (WriterCommitMessage m : messages) {
            if (m == null) continue;
            ShardCommitMessage message = (ShardCommitMessage) m;
            withoutMembers += message.rowsWithoutMembers();
            for (ShardInfo s : message.shards()) {
                shards.add(s);
                committed.add(s.path());
                committed.add(s.index());
            }
            if (message.keyHashes() != null) keyHashes.addAll(message.keyHashes());
        }
        try {
            Map<String, Long> listed = new HashMap<>();
            for (FileStatus file : written.listStatus("part-", ".tar", ".tar.idx")) {
                listed.put(file.getPath().getName(), file.getLen());
                if (!committed.contains(file.getPath().getName())) {
                    dir.fs.delete(file.getPath(), false);
                }
            }
            refuseUnseenShards(shards, listed.keySet(), dir.root);
            refuseWrongSizes(shards, listed, dir.root);
            if (keyHashes.size() == shards.size()) {
                refuseDuplicateKeys(written, shards, keyHashes, options.sanitizeKeys);
            }
            if (staged) {
                replaceOld(dir, written, shards);
            }
            dir.deleteTemporary(jobId);
            byte[] json = ManifestWriter.toJson(ManifestWriter.manifest(layout.manifestSchema(),
                shards, WebDatasetSource.version(), WebDatasetSource.sparkVersion()));
            ManifestWriter.writeAtomically(dir.fs, dir.root, json);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot commit the webdataset write to " + dir.root, e);
        }
        warnRowsWithoutMembers(withoutMembers, dir.root);
    }

    /**
     * Overwrite, once every check passed: deletes the old manifest (no reader sees a mix), then
     * everything else at the root but this job's temporary directory, then moves the staged
     * shards and their indexes into the root.
     */
    private void replaceOld(DatasetDir dir, DatasetDir from, List<ShardInfo> shards)
            throws IOException {
        dir.fs.delete(dir.child(ManifestWriter.MANIFEST), false);
        for (FileStatus entry : dir.fs.listStatus(dir.root)) {
            if (!entry.getPath().getName().equals(DatasetDir.TEMPORARY)) {
                dir.fs.delete(entry.getPath(), true);
            }
        }
        for (FileStatus entry : dir.fs.listStatus(dir.child(DatasetDir.TEMPORARY))) {
            if (!entry.getPath().getName().equals(jobId)) {
                dir.fs.delete(entry.getPath(), true);   // other jobs' leftovers, as before
            }
        }
        for (ShardInfo s : shards) {
            dir.moveReplacing(from.child(s.path()), dir.child(s.path()));
            dir.moveReplacing(from.child(s.index()), dir.child(s.index()));
        }
    }

    /**
     * Fails, before the manifest is written, when a committed shard (or its index) is not in the
     * driver's listing of the root: the executors wrote where this driver does not see (a path
     * local to one machine on a cluster), and a manifest would name shards no reader finds.
     */
    static void refuseUnseenShards(List<ShardInfo> shards, Set<String> listed, Path root) {
        List<String> unseen = new ArrayList<>();
        long rows = 0;
        for (ShardInfo s : shards) {
            if (!listed.contains(s.path()) || (s.index() != null && !listed.contains(s.index()))) {
                unseen.add(s.path());
                rows += s.numSamples();
            }
        }
        if (unseen.isEmpty()) {
            return;
        }
        List<String> shown = unseen.subList(0, Math.min(10, unseen.size()));
        throw new IllegalStateException("the webdataset write to " + root + " committed "
            + shards.size() + " shard(s), but the driver does not see " + unseen.size()
            + " of them there (" + rows + " samples): " + String.join(", ", shown)
            + (unseen.size() > shown.size() ? " and " + (unseen.size() - shown.size()) + " more"
            : "") + ". The executors and the driver do not see the same files at the path (a "
            + "path local to one machine, on a cluster?); no manifest was written. Write to "
            + "storage every machine shares (HDFS, S3, a shared mount)");
    }

    /**
     * Fails, before the manifest is written, when a committed shard's file in the listing is not
     * of the size its task reported (the bytes it wrote): the file was cut short, or replaced,
     * between the task's commit and the job's, and a manifest recording the reported size would
     * send every reader to a ShardReadError, or one recording the listed size to a tar that
     * ends early.
     */
    static void refuseWrongSizes(List<ShardInfo> shards, Map<String, Long> listed, Path root) {
        List<String> wrong = new ArrayList<>();
        for (ShardInfo s : shards) {
            Long size = listed.get(s.path());
            if (size != null && size != s.numBytes()) {
                wrong.add(s.path() + " (" + size + " bytes, its task wrote " + s.numBytes() + ")");
            }
        }
        if (wrong.isEmpty()) {
            return;
        }
        List<String> shown = wrong.subList(0, Math.min(10, wrong.size()));
        throw new IllegalStateException("the webdataset write to " + root + " committed "
            + shards.size() + " shard(s), but " + wrong.size() + " of them are not of the size "
            + "their task wrote: " + String.join(", ", shown)
            + (wrong.size() > shown.size() ? " and " + (wrong.size() - shown.size()) + " more"
            : "") + ". Something changed the files between the tasks' commits and the job's "
            + "(another writer at the same path, or storage that lost data); no manifest was "
            + "written. Write again, to a path no other job writes");
    }

    /**
     * Fails, before the manifest is written, when a sample key is in two shards (of two tasks, or
     * of one task that wrote several): each shard's writer refuses a key twice in it, but only
     * the driver sees every shard, and a reader would see two samples with one key. The abort
     * that follows deletes the shards.
     */
    static void refuseDuplicateKeys(DatasetDir dir, List<ShardInfo> shards, List<long[]> keyHashes,
                                    boolean sanitized) throws IOException {
        List<String> names = new ArrayList<>();
        List<String> indexes = new ArrayList<>();
        for (ShardInfo s : shards) {
            names.add(s.path());
            indexes.add(s.index());
        }
        List<KeyDigest.Duplicate> found = KeyDigest.duplicates(dir, names, indexes, keyHashes);
        if (found.isEmpty()) {
            return;
        }
        throw new IllegalStateException("the webdataset write to " + dir.root + " wrote sample "
            + "keys in two shards: " + found.stream().map(Object::toString)
            .collect(java.util.stream.Collectors.joining(", "))
            + (found.size() >= KeyDigest.SHOWN ? " and maybe more" : "") + "; a key names one "
            + "sample (readers group a tar's members by key), so each must appear once; no "
            + "manifest was written and the shards are removed. Make the keys unique (e.g. "
            + "df.dropDuplicates([keyColumn])), or drop the key column to have keys generated"
            + (sanitized ? " (invalidKeys=sanitize replaced '.', '/', '\\', whitespace and control "
            + "characters by '_', so distinct keys such as \"a.b\" and \"a b\" can become one)" : ""));
    }

    /** Says how many rows wrote no sample: a tar sample exists only through its members. */
    static void warnRowsWithoutMembers(long rows, Path root) {
        if (rows > 0) {
            LOG.warn("{} row(s) written to {} had every member null (no key-only sample can exist "
                + "in a tar) and are not in the dataset; fill or drop those rows, or add a column "
                + "written to the json member", rows, root);
        }
    }

    @Override
    public void abort(WriterCommitMessage[] messages) {
        DatasetDir dir = dir();
        try {
            dir.deleteTemporary(jobId);
            if (staged && dir.fs.exists(dir.child(ManifestWriter.MANIFEST))) {
                return;   // the old dataset, untouched: its shards stay
            }
            for (Path shard : dir.list("part-", ".tar", ".tar.idx")) {
                dir.fs.delete(shard, false);
            }
            dir.fs.delete(dir.child(ManifestWriter.MANIFEST_TMP), false);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot clean up the failed write to " + dir.root, e);
        }
    }
}
