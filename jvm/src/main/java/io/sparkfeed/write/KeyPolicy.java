package io.sparkfeed.write;

import java.io.Serializable;

/**
 * Sample keys become the base of tar member names ({@code <key>.<ext>}), and webdataset splits a
 * member name at the first dot of its base name. A key is therefore valid when it is non-empty
 * and holds no '.', '/', '\', whitespace or control character (so no "..", no absolute path, no
 * directory). Invalid keys fail the task by default, or are sanitised: each such character
 * becomes '_'.
 */
public final class KeyPolicy implements Serializable {
    private static final long serialVersionUID = 1L;

    private final boolean sanitize;

    public KeyPolicy(boolean sanitize) {
        this.sanitize = sanitize;
    }

    static boolean invalidChar(char c) {
        return c == '.' || c == '/' || c == '\\' || Character.isWhitespace(c)
            || Character.isISOControl(c) || Character.isSpaceChar(c);
    }

    /**
     * The key to write, or an IllegalArgumentException naming the key and its column. The message
     * is one line (a key's control characters and line breaks are shown as {@code \\uXXXX}), so
     * the Python side can find it in a Spark error's text and word its advice for sparkfeed.write.
     */
    public String apply(String key, String column) {
        if (key == null || key.isEmpty()) {
            throw new IllegalArgumentException("sample key in column \"" + column + "\" is "
                + (key == null ? "null" : "empty") + "; every sample needs a non-empty key");
        }
        int bad = firstInvalid(key);
        if (bad < 0) {
            return key;
        }
        if (!sanitize) {
            throw new IllegalArgumentException("invalid sample key \"" + shown(key) + "\" in column \""
                + column + "\": keys may not contain '.', '/', '\\', whitespace or control "
                + "characters (webdataset splits member names at the first dot); found "
                + describe(key.charAt(bad)) + " at index " + bad
                + ". Use option invalidKeys=sanitize to replace them by '_'");
        }
        char[] chars = key.toCharArray();
        for (int i = bad; i < chars.length; i++) {
            if (invalidChar(chars[i])) {
                chars[i] = '_';
            }
        }
        return new String(chars);
    }

    /** The key with each character that is not a visible one or a plain space as U-escape. */
    static String shown(String key) {
        StringBuilder out = new StringBuilder(key.length());
        for (int i = 0; i < key.length(); i++) {
            char c = key.charAt(i);
            boolean plain = c == ' ' || !(Character.isISOControl(c) || Character.isWhitespace(c)
                || Character.isSpaceChar(c));
            out.append(plain ? String.valueOf(c) : String.format("\\u%04X", (int) c));
        }
        return out.toString();
    }

    private static int firstInvalid(String key) {
        for (int i = 0; i < key.length(); i++) {
            if (invalidChar(key.charAt(i))) {
                return i;
            }
        }
        return -1;
    }

    private static String describe(char c) {
        return c >= 0x20 && c != 0x7f && !Character.isWhitespace(c)
            ? "'" + c + "'" : String.format("U+%04X", (int) c);
    }
}
