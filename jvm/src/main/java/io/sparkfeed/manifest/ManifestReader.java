package io.sparkfeed.manifest;

import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

import com.fasterxml.jackson.databind.JsonNode;
import io.sparkfeed.SafePath;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Reads the parts of a webdataset manifest the Spark reader needs: the columns (name, Arrow
 * type, member) and the shard paths. Refuses unknown versions, other formats and shard paths
 * that could escape the dataset.
 */
public final class ManifestReader {
    /** One column of the manifest schema. */
    public static final class Column {
        public final String name;
        public final String type;
        public final String member;

        Column(String name, String type, String member) {
            this.name = name;
            this.type = type;
            this.member = member;
        }
    }

    public final List<Column> columns;
    public final List<String> shards;

    private ManifestReader(List<Column> columns, List<String> shards) {
        this.columns = Collections.unmodifiableList(columns);
        this.shards = Collections.unmodifiableList(shards);
    }

    /** The manifest of the dataset at dir, or null when it has none. */
    public static ManifestReader readIfPresent(FileSystem fs, Path dir) throws IOException {
        Path file = new Path(dir, ManifestWriter.MANIFEST);
        if (!fs.exists(file)) {
            return null;
        }
        JsonNode root;
        try (InputStream in = fs.open(file)) {
            root = ManifestWriter.JSON.readTree(in);
        }
        return parse(root, file.toString());
    }

    static ManifestReader parse(JsonNode root, String where) {
        int version = root.path("sparkfeed_manifest").asInt(-1);
        if (version != ManifestWriter.VERSION) {
            throw new IllegalArgumentException("unsupported sparkfeed manifest version "
                + root.path("sparkfeed_manifest") + " in " + where + " (this reader knows 1)");
        }
        String format = root.path("format").asText();
        if (!"webdataset".equals(format)) {
            throw new IllegalArgumentException(where + " describes a \"" + format
                + "\" dataset; read it with spark.read.format(\"" + format + "\")");
        }
        List<Column> columns = new ArrayList<>();
        for (JsonNode c : root.path("schema")) {
            columns.add(new Column(c.path("name").asText(), c.path("type").asText(),
                c.path("member").asText(null)));
        }
        List<String> shards = new ArrayList<>();
        for (JsonNode s : root.path("shards")) {
            String path = s.path("path").asText();
            checkRelative(path, where);
            shards.add(path);
        }
        return new ManifestReader(columns, shards);
    }

    /** A shard path must stay inside the dataset: the one rule of {@link SafePath}. */
    public static void checkRelative(String path, String where) {
        SafePath.check(path, "shard path", where);
    }
}
