package io.sparkfeed;

import java.io.IOException;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * The options of {@code format("webdataset")}, validated once at the door (driver side).
 *
 * <pre>
 *   path             required    the dataset root (any Hadoop path: file:, hdfs:, s3a:, ...)
 *   samplesPerShard  10000       at most this many samples per tar shard
 *   maxShardBytes    1073741824  a shard is closed once it holds about this many bytes
 *   keyColumn        "key"       the string column holding sample keys, if present (the
 *                                default name on a non-string column: an ordinary column)
 *   clsColumn        "label"     the integer column written as the .cls member
 *   codecs           {}          JSON map binary column -> codec (jpeg -> .jpg, png, npy, ...)
 *   invalidKeys      "error"     "error" | "sanitize" for keys with . / \ whitespace, controls
 * </pre>
 */
public final class WebDatasetOptions implements Serializable {
    private static final long serialVersionUID = 1L;

    public static final int DEFAULT_SAMPLES_PER_SHARD = 10_000;
    public static final long DEFAULT_MAX_SHARD_BYTES = 1L << 30;

    public final String path;
    public final int samplesPerShard;
    public final long maxShardBytes;
    public final String keyColumn;
    /** Whether keyColumn was given: the default name on a non-string column is an ordinary column. */
    public final boolean keyColumnGiven;
    public final String clsColumn;
    /** Whether clsColumn was given: then it must name an integer column other than the key. */
    public final boolean clsColumnGiven;
    public final Map<String, String> codecs;
    public final boolean sanitizeKeys;

    private WebDatasetOptions(String path, int samplesPerShard, long maxShardBytes,
                              String keyColumn, boolean keyColumnGiven, String clsColumn,
                              boolean clsColumnGiven, Map<String, String> codecs,
                              boolean sanitizeKeys) {
        this.path = path;
        this.samplesPerShard = samplesPerShard;
        this.maxShardBytes = maxShardBytes;
        this.keyColumn = keyColumn;
        this.keyColumnGiven = keyColumnGiven;
        this.clsColumn = clsColumn;
        this.clsColumnGiven = clsColumnGiven;
        this.codecs = codecs;
        this.sanitizeKeys = sanitizeKeys;
    }

    /** The options a write takes (the read takes only {@code path} and ignores the others). */
    public static final List<String> WRITE_OPTIONS = List.of("path", "samplesPerShard",
        "maxShardBytes", "keyColumn", "clsColumn", "codecs", "invalidKeys");

    /**
     * Fails on an option a write does not know, in any case: Spark hands a data source every
     * option given, and a misspelt one ({@code samplesPerShards}) was ignored without a word,
     * its default taking its place.
     */
    public static void refuseUnknownForWrite(Map<String, String> raw) {
        Set<String> known = new HashSet<>();
        WRITE_OPTIONS.forEach(k -> known.add(k.toLowerCase(Locale.ROOT)));
        List<String> unknown = new ArrayList<>();
        raw.keySet().forEach(k -> {
            if (!known.contains(k.toLowerCase(Locale.ROOT))) unknown.add(k);
        });
        if (!unknown.isEmpty()) {
            Collections.sort(unknown);
            throw new IllegalArgumentException("format(\"webdataset\") has no write option "
                + String.join(", ", unknown) + "; it takes " + String.join(", ", WRITE_OPTIONS)
                + " (in any case)");
        }
    }

    /** Parses case-insensitive options (keys as Spark passes them, any case). */
    public static WebDatasetOptions parse(Map<String, String> raw) {
        Map<String, String> o = new LinkedHashMap<>();
        raw.forEach((k, v) -> o.put(k.toLowerCase(Locale.ROOT), v));
        String path = o.get("path");
        if (path == null || path.isEmpty()) {
            throw new IllegalArgumentException("format(\"webdataset\") needs a path: "
                + "df.write.format(\"webdataset\").save(path) or spark.read.format(\"webdataset\").load(path)");
        }
        long samples = positive(o, "samplesPerShard", DEFAULT_SAMPLES_PER_SHARD);
        if (samples > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("samplesPerShard should be at most "
                + Integer.MAX_VALUE + ", but got samplesPerShard=" + samples);
        }
        long bytes = positive(o, "maxShardBytes", DEFAULT_MAX_SHARD_BYTES);
        String invalid = o.getOrDefault("invalidkeys", "error").toLowerCase(Locale.ROOT);
        if (!invalid.equals("error") && !invalid.equals("sanitize")) {
            throw new IllegalArgumentException("invalidKeys should be \"error\" or \"sanitize\", "
                + "but got invalidKeys=\"" + o.get("invalidkeys") + "\"");
        }
        return new WebDatasetOptions(path, (int) samples, bytes,
            o.getOrDefault("keycolumn", "key"), o.containsKey("keycolumn"),
            o.getOrDefault("clscolumn", "label"), o.containsKey("clscolumn"),
            codecs(o.get("codecs")), invalid.equals("sanitize"));
    }

    private static long positive(Map<String, String> o, String name, long dflt) {
        String text = o.get(name.toLowerCase(Locale.ROOT));
        if (text == null) {
            return dflt;
        }
        long value;
        try {
            value = Long.parseLong(text.trim());
        } catch (NumberFormatException e) {
            value = 0;
        }
        if (value <= 0) {
            throw new IllegalArgumentException(name + " should be a positive integer, but got "
                + name + "=" + text);
        }
        return value;
    }

    private static Map<String, String> codecs(String json) {
        if (json == null || json.trim().isEmpty()) {
            return Collections.emptyMap();
        }
        try {
            Map<String, String> parsed = new ObjectMapper().readValue(json,
                new TypeReference<LinkedHashMap<String, String>>() {});
            return Collections.unmodifiableMap(parsed);
        } catch (IOException e) {
            throw new IllegalArgumentException("codecs should be a JSON object column -> codec, "
                + "e.g. {\"image\": \"jpeg\"}, but got codecs=" + json, e);
        }
    }
}
