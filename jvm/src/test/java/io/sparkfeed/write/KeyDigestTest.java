package io.sparkfeed.write;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;
import java.util.List;

import io.sparkfeed.DatasetDir;
import org.apache.hadoop.conf.Configuration;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class KeyDigestTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private static long[] sorted(String... keys) {
        KeyDigest d = KeyDigest.create();
        for (String k : keys) d.add(k);
        return d.sorted();
    }

    private static void index(File root, String name, String... keys) throws IOException {
        StringBuilder text = new StringBuilder("v1.2 " + keys.length + "\n");
        for (String k : keys) text.append("cls 512 1 ").append(k).append(".cls\n");
        Files.write(new File(root, name).toPath(), text.toString().getBytes(StandardCharsets.UTF_8));
    }

    @Test
    public void aKeyInTwoShardsIsFoundAndNamedWithBoth() throws IOException {
        File root = tmp.newFolder("ds");
        index(root, "a.idx", "k1", "k2");
        index(root, "b.idx", "k3", "k2");
        List<KeyDigest.Duplicate> found = KeyDigest.duplicates(
            DatasetDir.of(root.getPath(), new Configuration()), Arrays.asList("a.tar", "b.tar"),
            Arrays.asList("a.idx", "b.idx"), Arrays.asList(sorted("k1", "k2"), sorted("k3", "k2")));
        assertEquals(1, found.size());
        assertEquals("\"k2\" (in a.tar and b.tar)", found.get(0).toString());
    }

    @Test
    public void equalHashesOfDistinctKeysRefuseNothing() throws IOException {
        File root = tmp.newFolder("ds");
        index(root, "a.idx", "x");
        index(root, "b.idx", "y");
        long collision = KeyDigest.hash("x");  // as if "y" hashed alike: the indexes say otherwise
        List<KeyDigest.Duplicate> found = KeyDigest.duplicates(
            DatasetDir.of(root.getPath(), new Configuration()), Arrays.asList("a.tar", "b.tar"),
            Arrays.asList("a.idx", "b.idx"), Arrays.asList(new long[] {collision}, new long[] {collision}));
        assertTrue(found.isEmpty());
    }

    @Test
    public void equalHashesInsideOneShardAreNoCandidates() {
        assertTrue(KeyDigest.candidates(Arrays.asList(new long[] {5, 5}, new long[] {6}), 10).isEmpty());
        assertEquals(1, KeyDigest.candidates(Arrays.asList(new long[] {1, 5}, new long[] {2, 5, 9}), 10).size());
    }
}
