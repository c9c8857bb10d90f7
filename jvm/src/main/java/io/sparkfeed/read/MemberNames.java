package io.sparkfeed.read;

/**
 * Which tar members belong to a sample, and how a member name splits into key and extension:
 * the rules of Python's {@code sparkfeed.read.tarindex.is_sample_member} and
 * {@code read.tar.split_name} (themselves webdataset's {@code base_plus_ext} and its metadata
 * skip), so the JVM and the loader give the same samples from the same tar.
 */
public final class MemberNames {
    private MemberNames() {
    }

    /**
     * Whether the (safe, SafePath-checked) member name is in a sample: a base name with a key
     * before its first dot ("a.jpg"; or "dir/.jpg", whose key is "dir/") and a non-empty
     * extension after it; not "README", "a.", a top-level ".txt", nor webdataset metadata.
     */
    public static boolean isSampleMember(String name) {
        String base = name.substring(name.lastIndexOf('/') + 1);
        int dot = base.indexOf('.');
        if (dot < 0 || dot == base.length() - 1) {
            return false;  // no extension, or an empty one
        }
        if (dot == 0 && !keyIsDirectory(name.substring(0, name.length() - base.length()))) {
            return false;  // ".txt", "a.b/.txt": no key webdataset takes
        }
        return !isMeta(name);
    }

    /** Whether webdataset's name pattern takes "head" ("d/") as the key of "d/.ext": its last
     * directory name holds no dot. */
    private static boolean keyIsDirectory(String head) {
        if (head.isEmpty()) {
            return false;
        }
        String dir = head.substring(0, head.length() - 1);
        String last = dir.substring(dir.lastIndexOf('/') + 1);
        return !last.isEmpty() && last.indexOf('.') < 0;
    }

    /** Webdataset metadata: a top directory "__x__/" or a top-level name "__x__". */
    static boolean isMeta(String name) {
        if (!name.startsWith("__")) {
            return false;
        }
        int slash = name.indexOf('/');
        if (slash < 0 && name.endsWith("__")) {
            return true;
        }
        String first = slash < 0 ? name : name.substring(0, slash);
        return first.length() >= 4 && first.endsWith("__");
    }

    /** The key of a sample member: the name up to the first dot of its base name. */
    static String key(String name) {
        String base = name.substring(name.lastIndexOf('/') + 1);
        return name.substring(0, name.length() - base.length() + base.indexOf('.'));
    }

    /** The extension of a sample member: its base name after the first dot. */
    public static String extension(String name) {
        String base = name.substring(name.lastIndexOf('/') + 1);
        return base.substring(base.indexOf('.') + 1);
    }

    /** A name quoted as Python's repr quotes it, so both readers' errors read alike. */
    static String quote(String s) {
        char q = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder out = new StringBuilder().append(q);
        for (int i = 0; i < s.length(); i++) {
            escaped(out, s.charAt(i), q, 0x7F);
        }
        return out.append(q).toString();
    }

    /** Bytes [from, to) as Python's repr of a bytes object writes them (b'a\\x00'). */
    static String quoteBytes(byte[] b, int from, int to) {
        boolean single = false;
        boolean dbl = false;
        for (int i = from; i < to; i++) {
            single |= b[i] == '\'';
            dbl |= b[i] == '"';
        }
        char q = single && !dbl ? '"' : '\'';
        StringBuilder out = new StringBuilder("b").append(q);
        for (int i = from; i < to; i++) {
            escaped(out, b[i] & 0xFF, q, 0xFF);
        }
        return out.append(q).toString();
    }

    /** Character `c` as Python's repr writes it inside quotes `q`: control characters and those
     *  from 0x7F to `hexUpTo` as \\xNN (a str's non-ASCII letters stay, a bytes object's do not). */
    private static void escaped(StringBuilder out, int c, char q, int hexUpTo) {
        if (c == '\\' || c == q) {
            out.append('\\').append((char) c);
        } else if (c == '\n') {
            out.append("\\n");
        } else if (c == '\t') {
            out.append("\\t");
        } else if (c == '\r') {
            out.append("\\r");
        } else if (c < 0x20 || (c >= 0x7F && c <= hexUpTo)) {
            out.append(String.format("\\x%02x", c));
        } else {
            out.append((char) c);
        }
    }
}
