package io.sparkfeed.write;

import java.io.Closeable;
import java.io.FilterOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Date;
import java.util.SortedSet;
import java.util.TreeSet;

import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveOutputStream;

/**
 * Writes one WebDataset shard: a POSIX (ustar, pax for long names) tar whose members are
 * {@code <key>.<ext>}, grouped by sample; regular files only, mode 0644, owner 0:0, one fixed
 * mtime. It also keeps the DALI index of the shard as it goes (the offset and size of each member
 * are known when it is written), in the format of DALI's {@code wds2idx} (version v1.2):
 *
 * <pre>
 *   v1.2 &lt;number of samples&gt;
 *   &lt;ext&gt; &lt;data offset&gt; &lt;size&gt; &lt;member name&gt; &lt;ext&gt; &lt;offset&gt; &lt;size&gt; &lt;name&gt; ...   (one line per sample)
 * </pre>
 *
 * Not thread-safe; one per shard. The caller validates keys and extensions.
 */
public final class TarShardWriter implements Closeable {
    public static final String INDEX_VERSION = "v1.2";

    private final CountingOutputStream counted;
    private final TarArchiveOutputStream tar;
    private final Date mtime;
    private final SortedSet<String> extensions = new TreeSet<>();
    private final StringBuilder index = new StringBuilder();
    private String key;
    private int membersInSample;
    private long samples;
    private boolean finished;

    /** @param out the shard's file (buffered by the caller); closed by {@link #close}. */
    public TarShardWriter(OutputStream out, long mtimeMillis) {
        this.counted = new CountingOutputStream(out);
        this.tar = new TarArchiveOutputStream(counted, StandardCharsets.UTF_8.name());
        tar.setLongFileMode(TarArchiveOutputStream.LONGFILE_POSIX);
        tar.setBigNumberMode(TarArchiveOutputStream.BIGNUMBER_POSIX);
        tar.setAddPaxHeadersForNonAsciiNames(true);
        this.mtime = new Date(mtimeMillis / 1000 * 1000);
    }

    /** Starts the next sample; its members follow with {@link #addMember}. */
    public void beginSample(String sampleKey) {
        if (key != null) {
            throw new IllegalStateException("sample \"" + key + "\" was not ended");
        }
        key = sampleKey;
        membersInSample = 0;
    }

    /** Appends the member {@code <key>.<ext>} holding {@code len} bytes of data. */
    public void addMember(String ext, byte[] data, int off, int len) throws IOException {
        String name = key + "." + ext;
        TarArchiveEntry entry = new TarArchiveEntry(name, true);
        entry.setSize(len);
        entry.setMode(0100644);
        entry.setModTime(mtime);
        entry.setUserName("");
        entry.setGroupName("");
        tar.putArchiveEntry(entry);
        long offset = counted.count;   // headers are whole 512-byte records, flushed at once
        tar.write(data, off, len);
        tar.closeArchiveEntry();
        extensions.add(ext);
        index.append(membersInSample == 0 ? "" : " ").append(ext).append(' ').append(offset)
            .append(' ').append(len).append(' ').append(name);
        membersInSample++;
    }

    /** Ends the sample; a sample with no member (all values null) leaves no trace. */
    public void endSample() {
        if (membersInSample > 0) {
            index.append('\n');
            samples++;
        }
        key = null;
    }

    /** Samples with at least one member so far. */
    public long samples() {
        return samples;
    }

    /** Bytes written to the file so far (the final size once finished). */
    public long bytes() {
        return counted.count;
    }

    public SortedSet<String> extensions() {
        return extensions;
    }

    /** The wds2idx (v1.2) index of what was written. */
    public String indexText() {
        return INDEX_VERSION + " " + samples + "\n" + index;
    }

    /** Writes the end-of-archive records and closes the file. */
    public void finish() throws IOException {
        if (!finished) {
            finished = true;
            tar.finish();
            tar.close();
        }
    }

    @Override
    public void close() throws IOException {
        finish();
    }

    /** Counts the bytes that reach the file. */
    private static final class CountingOutputStream extends FilterOutputStream {
        long count;

        CountingOutputStream(OutputStream out) {
            super(out);
        }

        @Override
        public void write(int b) throws IOException {
            out.write(b);
            count++;
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
            count += len;
        }
    }
}
