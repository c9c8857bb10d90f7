package io.sparkfeed.read;

import java.io.FilterInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;

import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.apache.commons.compress.archivers.tar.TarUtils;

/**
 * A tar stream that knows where it is and refuses the headers Python's reader refuses
 * ({@code read.tar.StrictTarInfo}). commons-compress never checks a header's checksum and takes
 * a header cut short for the archive's end, so a damaged header silently ended the shard (every
 * member after it lost) or was read as a member; here both are a {@link HeaderException} at the
 * header's tar offset, as is a name field with bytes after the NUL that ends it. The
 * end-of-archive zero block, and a file ending where a header would start (no end blocks, as
 * webdataset accepts), still end the archive.
 */
final class StrictTarStream extends TarArchiveInputStream {
    private static final int BLOCK = 512;
    private final Counting counting;
    private boolean ended;
    private boolean sparseExtension;  // the next record extends an old GNU sparse header

    /** A damaged header: the reason and the tar offset of its first byte. */
    static final class HeaderException extends IOException {
        private static final long serialVersionUID = 1L;
        final long offset;
        final String reason;

        HeaderException(long offset, String reason) {
            super(reason + " (tar offset " + offset + ")");
            this.offset = offset;
            this.reason = reason;
        }
    }

    private StrictTarStream(Counting in) {
        super(in, StandardCharsets.UTF_8.name());
        this.counting = in;
    }

    static StrictTarStream of(InputStream in) {
        return new StrictTarStream(new Counting(in));
    }

    /** The tar offset of the next byte to be read. */
    long position() {
        return counting.pos;
    }

    @Override
    protected byte[] readRecord() throws IOException {
        long at = counting.pos;
        byte[] record = super.readRecord();
        if (ended) {
            return record;  // after the end-of-archive block: only its optional second block
        }
        if (record == null) {
            if (counting.pos > at && at > 0) {
                throw new HeaderException(at, "member header cut short (truncated header); the "
                    + "members after it would be lost");
            }
            return null;
        }
        if (sparseExtension) {
            sparseExtension = record[504] != 0;  // no checksum: a sparse map, not a header
            return record;
        }
        if (isZero(record)) {
            ended = true;
            return record;
        }
        if (!TarUtils.verifyCheckSum(record)) {
            throw new HeaderException(at, at == 0 ? "not a tar file (its first header's checksum "
                + "is wrong)" : "member header damaged (bad checksum); the members after it would "
                + "be lost");
        }
        String problem = nameProblem(record, 0, 100);
        if (problem == null && record[345] != 0 && isPosixUstar(record)) {
            problem = nameProblem(record, 345, 155);
        }
        if (problem != null) {
            throw new HeaderException(at, "member header's " + problem);
        }
        sparseExtension = record[156] == 'S' && record[482] != 0;
        return record;
    }

    private static boolean isZero(byte[] record) {
        for (byte b : record) {
            if (b != 0) return false;
        }
        return true;
    }

    private static boolean isPosixUstar(byte[] r) {
        return r[257] == 'u' && r[258] == 's' && r[259] == 't' && r[260] == 'a' && r[261] == 'r'
            && r[262] == 0;
    }

    /** What is wrong with a name field whose bytes go on past the NUL that ends it (tar readers
     * cut it there, and the member would become another one), in read.tar's words; else null. */
    static String nameProblem(byte[] r, int from, int length) {
        int end = from;
        while (end < from + length && r[end] != 0) end++;
        int restFrom = end;
        int restTo = from + length;
        while (restFrom < restTo && r[restFrom] == 0) restFrom++;
        while (restTo > restFrom && r[restTo - 1] == 0) restTo--;
        if (restFrom == restTo) {
            return null;
        }
        return "name " + MemberNames.quoteBytes(r, from, end) + " is followed by a NUL and then "
            + MemberNames.quoteBytes(r, restFrom, Math.min(restTo, restFrom + 40)) + ": a NUL "
            + "inside a member name (tarfile and webdataset would cut the name there and read "
            + "another member)";
    }

    /** Round up to whole 512-byte blocks: where a member's data ends in the tar. */
    static long padded(long size) {
        return (size + BLOCK - 1) / BLOCK * BLOCK;
    }

    /** Counts the bytes read (and skipped) from the shard; mark/reset put the count back. */
    private static final class Counting extends FilterInputStream {
        long pos;
        private long marked;

        Counting(InputStream in) {
            super(in);
        }

        @Override
        public int read() throws IOException {
            int b = in.read();
            if (b >= 0) pos++;
            return b;
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            int n = in.read(b, off, len);
            if (n > 0) pos += n;
            return n;
        }

        @Override
        public long skip(long n) throws IOException {
            long s = in.skip(n);
            if (s > 0) pos += s;
            return s;
        }

        @Override
        public synchronized void mark(int limit) {
            in.mark(limit);
            marked = pos;
        }

        @Override
        public synchronized void reset() throws IOException {
            in.reset();
            pos = marked;
        }
    }
}
