package io.sparkfeed;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import io.sparkfeed.manifest.ManifestWriter;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.ChecksumFileSystem;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * The dataset root on any Hadoop file system, and the few file operations the writer and reader
 * share. On the local file system it uses the raw file system, so no {@code .crc} side files
 * appear next to the shards.
 */
public final class DatasetDir {
    public static final String TEMPORARY = "_temporary";
    /** Under a job's temporary directory: the shards its tasks committed, when it overwrites. */
    public static final String STAGED = "committed";
    /** Tries of {@link #createInTask} when a sibling's clean-up removed the directories meanwhile. */
    static final int CREATE_ATTEMPTS = 3;

    public final FileSystem fs;
    public final Path root;

    private DatasetDir(FileSystem fs, Path root) {
        this.fs = fs;
        this.root = root;
    }

    public static DatasetDir of(String path, Configuration conf) throws IOException {
        Path p = new Path(path);
        FileSystem fs = p.getFileSystem(conf);
        Path root = fs.makeQualified(p);
        if (fs instanceof ChecksumFileSystem) {
            fs = ((ChecksumFileSystem) fs).getRawFileSystem();
        }
        return on(fs, root);
    }

    /** The dataset at an already qualified root on the given file system (tests inject faults). */
    public static DatasetDir on(FileSystem fs, Path root) {
        return new DatasetDir(fs, root);
    }

    public Path child(String name) {
        return new Path(root, name);
    }

    /**
     * Where the tasks of an overwriting job commit their shards, {@code _temporary/<jobId>/
     * committed}: the old dataset stays whole at the root until the job commits.
     */
    public Path staging(String jobId) {
        return new Path(new Path(child(TEMPORARY), jobId), STAGED);
    }

    /**
     * True when the path holds a dataset or anything else: a manifest, a file, or a directory
     * with entries other than hidden ones ({@code _x}, {@code .x}, e.g. an empty _temporary).
     */
    public boolean exists() throws IOException {
        if (!fs.exists(root)) {
            return false;
        }
        if (fs.exists(child(ManifestWriter.MANIFEST)) || fs.getFileStatus(root).isFile()) {
            return true;
        }
        for (FileStatus s : fs.listStatus(root)) {
            String name = s.getPath().getName();
            if (!name.startsWith("_") && !name.startsWith(".")) {
                return true;
            }
        }
        return false;
    }

    /** Files directly under the root whose names start with prefix and end with one suffix. */
    public List<Path> list(String prefix, String... suffixes) throws IOException {
        List<Path> out = new ArrayList<>();
        for (FileStatus s : listStatus(prefix, suffixes)) {
            out.add(s.getPath());
        }
        return out;
    }

    /** {@link #list}, with each file's status (its size among them). */
    public List<FileStatus> listStatus(String prefix, String... suffixes) throws IOException {
        List<FileStatus> out = new ArrayList<>();
        if (!fs.exists(root)) {
            return out;
        }
        for (FileStatus s : fs.listStatus(root)) {
            String name = s.getPath().getName();
            if (!s.isFile() || !name.startsWith(prefix)) continue;
            for (String suffix : suffixes) {
                if (name.endsWith(suffix)) {
                    out.add(s);
                    break;
                }
            }
        }
        return out;
    }

    /** Moves src to dst, replacing dst (a retried task rewrites the same shard names). */
    public void moveReplacing(Path src, Path dst) throws IOException {
        if (fs.exists(dst)) {
            fs.delete(dst, false);
        }
        if (!fs.rename(src, dst)) {
            throw new IOException("cannot move " + src + " to " + dst);
        }
    }

    /** Deletes the job's temporary directory, and _temporary itself once empty. */
    public void deleteTemporary(String jobId) throws IOException {
        Path temporary = child(TEMPORARY);
        fs.delete(new Path(temporary, jobId), true);
        deleteIfEmpty(temporary);
    }

    /**
     * Deletes a task's directory, then the job's and _temporary when that left them empty: a task
     * aborted after its job (a task still running when another one failed the job is killed, and
     * may create its files after the job's abort removed _temporary) leaves no empty directories.
     */
    public void deleteTaskDirectory(Path taskDir) throws IOException {
        fs.delete(taskDir, true);
        Path jobDir = taskDir.getParent();
        deleteIfEmpty(jobDir);
        deleteIfEmpty(jobDir.getParent());
    }

    /**
     * Creates (overwrites) a file in a task directory. Making its directories races with a
     * sibling task's {@link #deleteTaskDirectory}, which removes _temporary and the job's
     * directory while they are empty: when the create fails and its directory is gone, the
     * directories are made again, up to {@link #CREATE_ATTEMPTS} tries. Any other failure, or the
     * same one each time, is thrown.
     */
    public FSDataOutputStream createInTask(Path file, int bufferBytes) throws IOException {
        for (int attempt = 1; ; attempt++) {
            try {
                return fs.create(file, true, bufferBytes);
            } catch (IOException e) {
                if (attempt >= CREATE_ATTEMPTS || fs.exists(file.getParent())) {
                    throw e;
                }
            }
        }
    }

    private void deleteIfEmpty(Path directory) {
        try {
            if (fs.exists(directory) && fs.listStatus(directory).length == 0) {
                fs.delete(directory, false);
            }
        } catch (IOException raced) {
            // another task wrote into it meanwhile: the last one out removes it
        }
    }
}
