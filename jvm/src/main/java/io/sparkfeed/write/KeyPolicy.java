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

    /** The key to write, or an IllegalArgumentException naming the key and its column. */
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
            throw new IllegalArgumentException("invalid sample key \"" + key + "\" in column \""
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
