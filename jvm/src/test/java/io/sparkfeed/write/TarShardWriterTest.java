package io.sparkfeed.write;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.junit.Test;

public class TarShardWriterTest {
    private static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** Three samples: one with 3 members, one with a 1000-byte member, one with a 0-byte member. */
    private static TarShardWriter writeThree(ByteArrayOutputStream file) throws IOException {
        TarShardWriter tar = new TarShardWriter(file, 1_700_000_000_123L);
        tar.beginSample("s0");
        tar.addMember("jpg", bytes("JPEGDATA"), 0, 8);
        tar.addMember("cls", bytes("7"), 0, 1);
        tar.addMember("json", bytes("{\"x\":1}"), 0, 7);
        tar.endSample();
        byte[] big = new byte[1000];
        Arrays.fill(big, (byte) 42);
        tar.beginSample("s1");
        tar.addMember("jpg", big, 0, big.length);
        tar.endSample();
        tar.beginSample("s2");
        tar.addMember("txt", new byte[0], 0, 0);
        tar.endSample();
        tar.beginSample("empty");   // no members: not a sample
        tar.endSample();
        tar.finish();
        return tar;
    }

    @Test
    public void membersReadBackWithCommonsCompress() throws IOException {
        ByteArrayOutputStream file = new ByteArrayOutputStream();
        TarShardWriter tar = writeThree(file);
        assertEquals(3, tar.samples());
        assertEquals(file.size(), tar.bytes());
        assertEquals(Arrays.asList("cls", "jpg", "json", "txt"), new ArrayList<>(tar.extensions()));

        List<String> names = new ArrayList<>();
        List<byte[]> data = new ArrayList<>();
        try (TarArchiveInputStream in = new TarArchiveInputStream(
                new ByteArrayInputStream(file.toByteArray()))) {
            for (TarArchiveEntry e = in.getNextEntry(); e != null; e = in.getNextEntry()) {
                assertTrue(e.getName(), e.isFile());
                assertEquals(0100644, e.getMode());
                assertEquals(1_700_000_000_000L, e.getModTime().getTime());
                names.add(e.getName());
                data.add(in.readAllBytes());
            }
        }
        assertEquals(Arrays.asList("s0.jpg", "s0.cls", "s0.json", "s1.jpg", "s2.txt"), names);
        assertArrayEquals(bytes("JPEGDATA"), data.get(0));
        assertArrayEquals(bytes("7"), data.get(1));
        assertEquals(1000, data.get(3).length);
        assertEquals(0, data.get(4).length);
    }

    @Test
    public void daliIndexPointsAtMemberData() throws IOException {
        ByteArrayOutputStream file = new ByteArrayOutputStream();
        TarShardWriter tar = writeThree(file);
        byte[] all = file.toByteArray();
        String[] lines = tar.indexText().split("\n");
        assertEquals("v1.2 3", lines[0]);
        assertEquals(4, lines.length);
        assertEquals("jpg 512 8 s0.jpg cls 1536 1 s0.cls json 2560 7 s0.json", lines[1]);
        assertEquals("jpg 3584 1000 s1.jpg", lines[2]);
        assertEquals("txt 5120 0 s2.txt", lines[3]);
        for (int i = 1; i < lines.length; i++) {
            String[] f = lines[i].split(" ");
            for (int k = 0; k < f.length; k += 4) {
                int offset = Integer.parseInt(f[k + 1]);
                int size = Integer.parseInt(f[k + 2]);
                assertEquals(0, offset % 512);
                // the 512-byte header just before the data names the member
                String header = new String(all, offset - 512, f[k + 3].length(),
                    StandardCharsets.UTF_8);
                assertEquals(f[k + 3], header);
                assertTrue(offset + size <= all.length);
            }
        }
        assertEquals((byte) 42, all[3584]);
        assertEquals((byte) 42, all[3584 + 999]);
    }

    @Test
    public void longKeysUsePaxHeadersAndIndexStillPointsAtData() throws IOException {
        ByteArrayOutputStream file = new ByteArrayOutputStream();
        TarShardWriter tar = new TarShardWriter(file, 0);
        char[] k = new char[150];
        Arrays.fill(k, 'k');
        String key = new String(k);
        tar.beginSample(key);
        tar.addMember("txt", bytes("hello"), 0, 5);
        tar.endSample();
        tar.finish();
        String[] f = tar.indexText().split("\n")[1].split(" ");
        int offset = Integer.parseInt(f[1]);
        assertEquals("hello", new String(file.toByteArray(), offset, 5, StandardCharsets.UTF_8));
        try (TarArchiveInputStream in = new TarArchiveInputStream(
                new ByteArrayInputStream(file.toByteArray()))) {
            assertEquals(key + ".txt", in.getNextEntry().getName());
            assertNull(in.getNextEntry());
        }
    }
}
