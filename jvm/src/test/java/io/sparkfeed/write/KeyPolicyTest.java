package io.sparkfeed.write;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Test;

public class KeyPolicyTest {
    private final KeyPolicy strict = new KeyPolicy(false);
    private final KeyPolicy sanitize = new KeyPolicy(true);

    @Test
    public void validKeysPassUnchanged() {
        for (String key : new String[] {"abc", "p00003_000000042", "img-001", "ünïcode", "a_b"}) {
            assertEquals(key, strict.apply(key, "key"));
            assertEquals(key, sanitize.apply(key, "key"));
        }
    }

    @Test
    public void invalidKeysFailNamingKeyAndColumn() {
        for (String key : new String[] {"a.b", "dir/x", "..", "/abs", "a\\b", "a b", "a\tb",
                                        "a\nb", "a\u0001b", "a\u00a0b"}) {
            try {
                strict.apply(key, "sample_id");
                fail("accepted " + key);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("\"" + KeyPolicy.shown(key) + "\""));
                assertTrue(e.getMessage(), !e.getMessage().contains("\n") && !e.getMessage().contains("\t"));
                assertTrue(e.getMessage(), e.getMessage().contains("column \"sample_id\""));
                assertTrue(e.getMessage(), e.getMessage().contains("invalidKeys=sanitize"));
            }
        }
    }

    @Test
    public void keysAreShownOnOneLineWithControlsAndLineBreaksEscaped() {
        assertEquals("a.b", KeyPolicy.shown("a.b"));
        assertEquals("a b", KeyPolicy.shown("a b"));
        assertEquals("a\\u000Ab\\u0009c\\u00A0d", KeyPolicy.shown("a\nb\tc\u00a0d"));
    }

    @Test
    public void sanitizeReplacesEachInvalidCharacter() {
        assertEquals("a_b", sanitize.apply("a.b", "key"));
        assertEquals("__", sanitize.apply("..", "key"));
        assertEquals("_etc_passwd", sanitize.apply("/etc/passwd", "key"));
        assertEquals("a_b_c_d_e", sanitize.apply("a\\b c\td\u0000e", "key"));
        assertEquals("___x", sanitize.apply("../x", "key"));
    }

    @Test
    public void emptyAndNullKeysFailEvenWhenSanitising() {
        for (String key : new String[] {"", null}) {
            try {
                sanitize.apply(key, "key");
                fail("accepted " + key);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("column \"key\""));
            }
        }
    }
}
