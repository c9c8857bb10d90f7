package io.sparkfeed;

/**
 * The one rule for paths inside a dataset: manifest shard paths and tar member names. It is the
 * same rule as Python's {@code sparkfeed.storage.path_problem}, and both sides run the cases in
 * {@code tests/data/path_cases.json} (SafePathTest here), so the JVM and the loader accept and
 * refuse the same names with the same reason.
 *
 * <p>A path is split on "/" into parts. It may not be empty, hold a control character (NUL
 * included), be invalid UTF-8 (a lone surrogate), hold a backslash, be absolute, start with a
 * URL scheme or drive (":" in its first part), have an empty part ("a//b", "a/") or a ".." part.
 * Dots inside a part ({@code a..b.jpg}) and "." parts ({@code ./a.jpg}, as {@code tar -cf x.tar .}
 * writes) stay inside the dataset and are fine. The checks run in this order, so a path that
 * breaks several rules names the first.
 */
public final class SafePath {
    private SafePath() {
    }

    /** Why {@code path} is not a safe path inside a dataset (a phrase after "it"), or null. */
    public static String problem(String path) {
        if (path == null || path.isEmpty()) {
            return "is empty or not a string";
        }
        for (int i = 0; i < path.length(); i++) {
            char c = path.charAt(i);
            if (c < 0x20 || c == 0x7F) {
                return "holds a control character";
            }
        }
        if (hasLoneSurrogate(path)) {
            return "is not valid UTF-8";
        }
        if (path.indexOf('\\') >= 0) {
            return "holds a backslash";
        }
        if (path.startsWith("/")) {
            return "is absolute";
        }
        String[] parts = path.split("/", -1);  // -1 keeps trailing empty parts ("a/")
        if (parts[0].indexOf(':') >= 0) {
            return "starts with a URL scheme or drive";
        }
        for (String part : parts) {
            if (part.isEmpty()) {
                return "has an empty part";
            }
        }
        for (String part : parts) {
            if (part.equals("..")) {
                return "has a '..' part";
            }
        }
        return null;
    }

    /**
     * {@code path} itself, or an IllegalArgumentException saying what it is (for example
     * "shard path" or "member name"), where it came from, and why it is refused.
     */
    public static String check(String path, String what, String where) {
        String problem = problem(path);
        if (problem != null) {
            throw new IllegalArgumentException(what + " \"" + path + "\" in " + where
                + " could escape the dataset: it " + problem + "; paths must be relative to the"
                + " dataset root, without '..', absolute parts or URLs");
        }
        return path;
    }

    private static boolean hasLoneSurrogate(String s) {
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c) && i + 1 < s.length()
                    && Character.isLowSurrogate(s.charAt(i + 1))) {
                i++;
            } else if (Character.isSurrogate(c)) {
                return true;
            }
        }
        return false;
    }
}
