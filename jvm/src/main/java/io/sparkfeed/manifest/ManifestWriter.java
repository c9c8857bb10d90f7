package io.sparkfeed.manifest;

import java.io.IOException;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.core.json.JsonWriteFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.json.JsonMapper;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Builds the {@code _sparkfeed.json} manifest of a webdataset write and writes it last and
 * atomically: the JSON goes to {@code _sparkfeed.json.tmp}, which is then renamed into place, so a
 * reader sees either no manifest or a whole one.
 */
public final class ManifestWriter {
    public static final String MANIFEST = "_sparkfeed.json";
    public static final String MANIFEST_TMP = MANIFEST + ".tmp";
    public static final int VERSION = 1;

    /**
     * NaN / Infinity, should one reach a manifest, written bare (Python's json reads them), never
     * as quoted strings; read back too, so manifests whose float stats held an infinity (written
     * before {@link ColumnStats} left infinite bounds out) stay readable.
     */
    static final ObjectMapper JSON = JsonMapper.builder()
        .disable(JsonWriteFeature.WRITE_NAN_AS_STRINGS)
        .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS)
        .enable(SerializationFeature.INDENT_OUTPUT)
        .build();

    private ManifestWriter() {}

    /**
     * The manifest as an ordered map.
     *
     * @param schema one entry per column: name, type, optional codec, member (in column order)
     * @param shards committed shards, in any order (sorted by path here)
     */
    public static Map<String, Object> manifest(List<Map<String, Object>> schema,
                                               List<ShardInfo> shards,
                                               String sparkfeedVersion, String sparkVersion) {
        List<ShardInfo> sorted = new ArrayList<>(shards);
        Collections.sort(sorted);
        long samples = 0;
        long bytes = 0;
        List<Map<String, Object>> shardJson = new ArrayList<>();
        for (ShardInfo shard : sorted) {
            samples += shard.numSamples();
            bytes += shard.numBytes();
            shardJson.add(shard.toJson());
        }
        Map<String, Object> createdBy = new LinkedHashMap<>();
        createdBy.put("sparkfeed", sparkfeedVersion);
        createdBy.put("spark", sparkVersion);
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("sparkfeed_manifest", VERSION);
        out.put("format", "webdataset");
        out.put("created_by", createdBy);
        out.put("schema", schema);
        out.put("num_samples", samples);
        out.put("num_bytes", bytes);
        out.put("shards", shardJson);
        return out;
    }

    public static byte[] toJson(Map<String, Object> manifest) {
        try {
            return JSON.writeValueAsBytes(manifest);
        } catch (IOException e) {
            throw new IllegalStateException("cannot serialise the sparkfeed manifest", e);
        }
    }

    /** Writes {@code dir/_sparkfeed.json} through a temporary file and a rename. */
    public static void writeAtomically(FileSystem fs, Path dir, byte[] json) throws IOException {
        Path tmp = new Path(dir, MANIFEST_TMP);
        Path target = new Path(dir, MANIFEST);
        try (OutputStream out = fs.create(tmp, true)) {
            out.write(json);
        }
        if (fs.exists(target) && !fs.delete(target, false)) {
            throw new IOException("cannot replace the existing manifest " + target);
        }
        if (!fs.rename(tmp, target)) {
            fs.delete(tmp, false);
            throw new IOException("cannot rename " + tmp + " to " + target);
        }
    }
}
