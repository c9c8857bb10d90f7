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

    /** A damaged header (or no tar at all): the reason and the tar offset of its first byte. */
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

    // read.tar.COMPRESSED_MAGIC: a compressed stream named .tar is named as such
    private static final String[][] COMPRESSED = {{"\u001f\u008b", "gzip"}, {"BZh", "bzip2"},
        {"\u00fd7zXZ\u0000", "xz"}, {"(\u00b5/\u00fd", "zstd"},
        {"\u0004\"M\u0018", "lz4"}};
    private final String compressed;

    private StrictTarStream(Counting in, String compressed) {
        super(in, StandardCharsets.UTF_8.name());
        this.counting = in;
        this.compressed = compressed;
    }

    /** The tar in {@code in} (which must support mark: its first bytes are looked at). */
    static StrictTarStream of(InputStream in) throws IOException {
        in.mark(8);
        byte[] head = in.readNBytes(6);
        in.reset();
        return new StrictTarStream(new Counting(in), compressedKind(head));
    }

    /** The compression whose stream starts with head, else null. */
    static String compressedKind(byte[] head) {
        String h = new String(head, StandardCharsets.ISO_8859_1);
        for (String[] c : COMPRESSED) {
            if (h.startsWith(c[0])) return c[1];
        }
        return null;
    }

    /** Why the file is no tar, for a failure at its first header. */
    private String notATar(String why) {
        if (compressed != null) {
            return "is " + compressed + "-compressed, though named .tar: sparkfeed reads tar "
                + "members in place by offset, which a compressed stream does not allow; "
                + "decompress it (JPEG and PNG members gain nothing from it)";
        }
        return "corrupt tar: not a tar file (" + why + ")";
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
            if (at == 0) {
                throw new HeaderException(0, notATar(counting.pos == 0 ? "the file is empty"
                    : "its " + counting.pos + " bytes are less than one tar header"));
            }
            if (counting.pos > at) {
                throw new HeaderException(at, "corrupt tar: member header cut short (truncated "
                    + "header); the members after it would be lost");
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
        if (!checksumAgrees(record)) {
            throw new HeaderException(at, at == 0 ? notATar("its first header's checksum is wrong")
                : "corrupt tar: member header damaged (bad checksum); the members after it would "
                + "be lost");
        }
        String problem = nameProblem(record, 0, 100);
        if (problem == null && record[345] != 0 && isPosixUstar(record)) {
            problem = nameProblem(record, 345, 155);
        }
        if (problem != null) {
            throw new HeaderException(at, "corrupt tar: member header's " + problem);
        }
        String undecodable = notUtf8(record, 0, 100);
        if (undecodable == null && record[345] != 0 && isPosixUstar(record)) {
            undecodable = notUtf8(record, 345, 155);
        }
        if (undecodable != null) {
            throw new HeaderException(at, "member name " + undecodable + " could escape the "
                + "dataset: it is not valid UTF-8");
        }
        sparseExtension = record[156] == 'S' && record[482] != 0;
        return record;
    }

    /** Whether the header's checksum field holds its sum (false where it is no octal number). */
    private static boolean checksumAgrees(byte[] record) {
        try {
            return TarUtils.verifyCheckSum(record);
        } catch (IllegalArgumentException e) {
            return false;
        }
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

    /** The name field's bytes (to its NUL) as Python's repr writes them when they are not UTF-8
     * (commons-compress would read "caf\xe9" and "caf\xe8" as one name, each byte made U+FFFD;
     * Python's reader refuses them), else null. */
    static String notUtf8(byte[] r, int from, int length) {
        int end = from;
        boolean ascii = true;
        for (; end < from + length && r[end] != 0; end++) {
            ascii &= r[end] > 0;
        }
        if (ascii) {
            return null;  // the usual name: no decoder needed
        }
        try {
            StandardCharsets.UTF_8.newDecoder().decode(java.nio.ByteBuffer.wrap(r, from, end - from));
            return null;
        } catch (java.nio.charset.CharacterCodingException e) {
            return MemberNames.quoteBytes(r, from, end);
        }
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
