package io.sparkfeed.manifest;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class ManifestWriterTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private static ShardInfo shard(String path, long samples, long bytes) {
        Map<String, Object> label = new LinkedHashMap<>();
        label.put("min", 0L);
        label.put("max", 9L);
        label.put("null_count", 0L);
        return new ShardInfo(path, samples, bytes, Arrays.asList("txt", "cls", "jpg"),
            Collections.singletonMap("label", label), path + ".idx");
    }

    private static List<Map<String, Object>> schema() {
        Map<String, Object> image = new LinkedHashMap<>();
        image.put("name", "image");
        image.put("type", "binary");
        image.put("codec", "jpeg");
        image.put("member", "jpg");
        return Collections.singletonList(image);
    }

    @Test
    public void manifestSumsAndSortsShards() throws IOException {
        List<ShardInfo> shards = new ArrayList<>(Arrays.asList(
            shard("part-00001-0000.tar", 5, 3072), shard("part-00000-0001.tar", 2, 2048),
            shard("part-00000-0000.tar", 10, 10240)));
        byte[] json = ManifestWriter.toJson(ManifestWriter.manifest(schema(), shards, "0.1.0", "4.3.0"));
        JsonNode root = ManifestWriter.JSON.readTree(json);
        assertEquals(1, root.get("sparkfeed_manifest").asInt());
        assertEquals("webdataset", root.get("format").asText());
        assertEquals("4.3.0", root.get("created_by").get("spark").asText());
        assertEquals(17, root.get("num_samples").asLong());
        assertEquals(15360, root.get("num_bytes").asLong());
        assertEquals("part-00000-0000.tar", root.get("shards").get(0).get("path").asText());
        assertEquals("part-00001-0000.tar", root.get("shards").get(2).get("path").asText());
        JsonNode first = root.get("shards").get(0);
        assertEquals("[\"cls\",\"jpg\",\"txt\"]", first.get("members").toString());
        assertEquals("part-00000-0000.tar.idx", first.get("index").asText());
        assertEquals(9, first.get("stats").get("label").get("max").asLong());
        assertEquals("jpg", root.get("schema").get(0).get("member").asText());
        assertEquals("jpeg", root.get("schema").get(0).get("codec").asText());
    }

    @Test
    public void nanIsWrittenBareForPython() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("x", Double.NaN);
        assertEquals("{\"x\":NaN}", new String(ManifestWriter.toJson(m)).replaceAll("\\s", ""));
    }

    @Test
    public void atomicWriteLeavesOnlyTheManifest() throws IOException {
        File dir = tmp.newFolder("ds");
        FileSystem fs = FileSystem.getLocal(new Configuration()).getRawFileSystem();
        Path root = new Path(dir.getAbsolutePath());
        Files.write(new File(dir, ManifestWriter.MANIFEST).toPath(), "old".getBytes());
        byte[] json = ManifestWriter.toJson(ManifestWriter.manifest(schema(),
            Collections.singletonList(shard("part-00000-0000.tar", 1, 1024)), "0.1.0", "4.3.0"));
        ManifestWriter.writeAtomically(fs, root, json);
        String[] names = dir.list();
        Arrays.sort(names);
        assertEquals(Arrays.asList(ManifestWriter.MANIFEST), Arrays.asList(names));
        ManifestReader read = ManifestReader.readIfPresent(fs, root);
        assertEquals(Arrays.asList("part-00000-0000.tar"), read.shards);
        assertEquals("image", read.columns.get(0).name);
        assertEquals("jpg", read.columns.get(0).member);
    }

    @Test
    public void readerRefusesEscapingShardPaths() {
        for (String bad : new String[] {"../x.tar", "/abs.tar", "a/../../b.tar", ""}) {
            try {
                ManifestReader.checkRelative(bad, "m.json");
                fail("accepted " + bad);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("could escape the dataset"));
            }
        }
        ManifestReader.checkRelative("sub/part-00000-0000.tar", "m.json");
    }

    @Test
    public void arrowTypeStringsRoundTrip() {
        Object[][] cases = {
            {DataTypes.IntegerType, "int32"}, {DataTypes.LongType, "int64"},
            {DataTypes.ShortType, "int16"}, {DataTypes.ByteType, "int8"},
            {DataTypes.FloatType, "float"}, {DataTypes.DoubleType, "double"},
            {DataTypes.StringType, "string"}, {DataTypes.BinaryType, "binary"},
            {DataTypes.BooleanType, "bool"}, {DataTypes.DateType, "date32[day]"},
            {DataTypes.TimestampType, "timestamp[us, tz=UTC]"},
            {DataTypes.TimestampNTZType, "timestamp[us]"},
            {DataTypes.createArrayType(DataTypes.FloatType), "list<item: float>"},
            {DataTypes.createDecimalType(10, 2), "decimal128(10, 2)"},
        };
        for (Object[] c : cases) {
            assertEquals(c[1], ArrowTypes.arrowName((DataType) c[0]));
            assertEquals(((DataType) c[0]).simpleString(),
                ArrowTypes.sparkType((String) c[1]).simpleString());
        }
        assertEquals(null, ArrowTypes.arrowName(
            DataTypes.createMapType(DataTypes.StringType, DataTypes.StringType)));
        assertFalse(ArrowTypes.hasStats(DataTypes.createArrayType(DataTypes.FloatType)));
    }
}
