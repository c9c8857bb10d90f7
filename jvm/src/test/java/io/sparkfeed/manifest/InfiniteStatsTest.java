package io.sparkfeed.manifest;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Map;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/**
 * A float column holding an infinity once gave a manifest with a bare {@code Infinity}, which
 * the JVM reader (Jackson's defaults) and every strict JSON parser refused: the dataset could not
 * be read back with {@code spark.read.format("webdataset")}.
 */
public class InfiniteStatsTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private static Map<String, Object> stats(DataType type, Object... values) {
        ColumnStats s = ColumnStats.forColumn(type, 0);
        for (Object v : values) {
            s.update(new GenericInternalRow(new Object[] {v}));
        }
        return s.summary();
    }

    @Test
    public void anInfiniteBoundLeavesNoRangeAndNoInfinityInTheJson() {
        Map<String, Object> up = stats(DataTypes.DoubleType, 1.5, Double.POSITIVE_INFINITY, null);
        assertNull(up.get("min"));
        assertNull(up.get("max"));
        assertEquals(1L, up.get("null_count"));
        Map<String, Object> down = stats(DataTypes.FloatType, Float.NEGATIVE_INFINITY, 2f);
        assertNull(down.get("min"));
        assertNull(down.get("max"));
        String json = new String(ManifestWriter.toJson(up), StandardCharsets.UTF_8);
        assertEquals("{\"min\":null,\"max\":null,\"null_count\":1}", json.replaceAll("\\s", ""));
        Map<String, Object> finite = stats(DataTypes.DoubleType, -0.5, Double.NaN, 3.0);
        assertEquals(-0.5, finite.get("min"));
        assertEquals(3.0, finite.get("max"));
    }

    @Test
    public void aManifestWithABareInfinityFromAnEarlierWriterStillReads() throws IOException {
        File dir = tmp.newFolder("ds");
        String manifest = "{\"sparkfeed_manifest\": 1, \"format\": \"webdataset\", \"schema\": "
            + "[{\"name\": \"x\", \"type\": \"double\", \"member\": \"json\"}], \"num_samples\": 1, "
            + "\"num_bytes\": 1024, \"shards\": [{\"path\": \"part-00000-0000.tar\", "
            + "\"num_samples\": 1, \"num_bytes\": 1024, \"members\": [\"json\"], \"stats\": "
            + "{\"x\": {\"min\": -Infinity, \"max\": Infinity, \"null_count\": 0}}}]}";
        Files.write(new File(dir, ManifestWriter.MANIFEST).toPath(),
            manifest.getBytes(StandardCharsets.UTF_8));
        FileSystem fs = FileSystem.getLocal(new Configuration()).getRawFileSystem();
        ManifestReader read = ManifestReader.readIfPresent(fs, new Path(dir.getAbsolutePath()));
        assertEquals("part-00000-0000.tar", read.shards.get(0));
        assertEquals("x", read.columns.get(0).name);
    }
}
