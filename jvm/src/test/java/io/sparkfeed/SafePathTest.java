package io.sparkfeed;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.sparkfeed.manifest.ManifestReader;
import org.junit.Test;

/**
 * The path rule against tests/data/path_cases.json, the file Python's tests/unit/test_path_rule.py
 * also runs: the same paths pass, and the same paths fail with the same reason, on both sides.
 * build.gradle passes the file's location in the system property sparkfeed.pathCases.
 */
public class SafePathTest {
    private static JsonNode cases() throws IOException {
        String file = System.getProperty("sparkfeed.pathCases", "tests/data/path_cases.json");
        JsonNode cases = new ObjectMapper().readTree(new File(file)).path("cases");
        assertTrue("no cases in " + file, cases.size() >= 30);
        return cases;
    }

    @Test
    public void everySharedCaseGetsTheSharedAnswer() throws IOException {
        int ok = 0;
        int refused = 0;
        for (JsonNode c : cases()) {
            String path = c.path("path").asText();
            if (c.path("ok").asBoolean(false)) {
                assertNull("refused " + path, SafePath.problem(path));
                assertEquals(path, SafePath.check(path, "shard path", "m.json"));
                ok++;
            } else {
                assertEquals("reason for " + path, c.path("error").asText(), SafePath.problem(path));
                refused++;
            }
        }
        assertTrue(ok >= 10 && refused >= 20);
    }

    @Test
    public void aRefusedPathNamesItselfWhereItCameFromAndWhy() {
        try {
            SafePath.check("a/../../b.tar", "member name", "shard-00003.tar");
            fail("accepted a/../../b.tar");
        } catch (IllegalArgumentException e) {
            assertEquals("member name \"a/../../b.tar\" in shard-00003.tar could escape the dataset:"
                + " it has a '..' part; paths must be relative to the dataset root, without '..',"
                + " absolute parts or URLs", e.getMessage());
        }
    }

    @Test
    public void theManifestReaderUsesTheRule() throws IOException {
        for (JsonNode c : cases()) {
            String path = c.path("path").asText();
            try {
                ManifestReader.checkRelative(path, "m.json");
                assertTrue("accepted " + path, c.path("ok").asBoolean(false));
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("m.json could escape the dataset: it "
                    + c.path("error").asText()));
            }
        }
    }

    @Test
    public void aNullPathIsRefused() {
        assertEquals("is empty or not a string", SafePath.problem(null));
    }
}
