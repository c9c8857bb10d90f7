package io.sparkfeed.read;

import static org.junit.Assert.assertEquals;

import java.nio.charset.StandardCharsets;

import org.junit.Test;

/**
 * The JVM's sample-member rule against the verdicts of Python's
 * {@code sparkfeed.read.tarindex.is_sample_member} and {@code read.tar.split_name} (each case's
 * expected answer is what Python gives), so both readers take the same samples from one tar.
 */
public class MemberNamesTest {
    // name, whether it is in a sample, its key, its extension (as Python's reader gives them)
    private static final String[][] CASES = {
        {"a.jpg", "true", "a", "jpg"},
        {"README", "false"},
        {"a.", "false"},
        {".txt", "false"},
        {"dir/README", "false"},
        {"d/.txt", "true", "d/", "txt"},
        {"a.b/.txt", "false"},
        {"x/d/.txt", "true", "x/d/", "txt"},
        {"./.txt", "false"},
        {"./a.jpg", "true", "./a", "jpg"},
        {"__meta__/a.json", "false"},
        {"__x.y__", "false"},
        {"__a__/b.c/d.txt", "false"},
        {"__k.txt", "true", "__k", "txt"},
        {"a__.txt", "true", "a__", "txt"},
        {"__/a.txt", "true", "__/a", "txt"},
        {"__ab__c/x.txt", "true", "__ab__c/x", "txt"},
        {"dir/__x__/a.txt", "true", "dir/__x__/a", "txt"},
        {"a.b.c", "true", "a", "b.c"},
        {"dir.x/a.seg.png", "true", "dir.x/a", "seg.png"},
        {"d/.", "false"},
        {"a/b/c.", "false"},
    };

    @Test
    public void sampleMembersKeysAndExtensionsAreThePythonReaders() {
        for (String[] c : CASES) {
            boolean in = Boolean.parseBoolean(c[1]);
            assertEquals("in a sample: " + c[0], in, MemberNames.isSampleMember(c[0]));
            if (in) {
                assertEquals("key of " + c[0], c[2], MemberNames.key(c[0]));
                assertEquals("extension of " + c[0], c[3], MemberNames.extension(c[0]));
            }
        }
    }

    @Test
    public void namesAreQuotedAsPythonsReprQuotesThem() {
        assertEquals("'a.jpg'", MemberNames.quote("a.jpg"));
        assertEquals("\"it's.txt\"", MemberNames.quote("it's.txt"));
        assertEquals("'a\\nb'", MemberNames.quote("a\nb"));
        byte[] b = "c\0txt\u00e9".getBytes(StandardCharsets.UTF_8);
        assertEquals("b'txt\\xc3\\xa9'", MemberNames.quoteBytes(b, 2, b.length));
    }
}
