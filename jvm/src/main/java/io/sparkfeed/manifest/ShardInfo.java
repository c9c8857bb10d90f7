package io.sparkfeed.manifest;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One committed shard as the manifest lists it: path relative to the dataset root, sample
 * count, file size, the sorted member extensions, per-column stats and its DALI index file.
 * Immutable; travels from the tasks to the driver inside the commit message.
 */
public final class ShardInfo implements Serializable, Comparable<ShardInfo> {
    private static final long serialVersionUID = 1L;

    private final String path;
    private final long numSamples;
    private final long numBytes;
    private final List<String> members;
    private final LinkedHashMap<String, LinkedHashMap<String, Object>> stats;
    private final String index;

    public ShardInfo(String path, long numSamples, long numBytes, List<String> members,
                     Map<String, ? extends Map<String, Object>> stats, String index) {
        this.path = path;
        this.numSamples = numSamples;
        this.numBytes = numBytes;
        List<String> sorted = new ArrayList<>(members);
        Collections.sort(sorted);
        this.members = Collections.unmodifiableList(sorted);
        this.stats = new LinkedHashMap<>();
        stats.forEach((column, s) -> this.stats.put(column, new LinkedHashMap<>(s)));
        this.index = index;
    }

    public String path() { return path; }
    public long numSamples() { return numSamples; }
    public long numBytes() { return numBytes; }
    public List<String> members() { return members; }
    public Map<String, ? extends Map<String, Object>> stats() {
        return Collections.unmodifiableMap(stats);
    }
    public String index() { return index; }

    /** The manifest's JSON object for this shard, keys in a fixed order. */
    Map<String, Object> toJson() {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("path", path);
        out.put("num_samples", numSamples);
        out.put("num_bytes", numBytes);
        out.put("members", members);
        out.put("stats", stats);
        out.put("index", index);
        return out;
    }

    @Override
    public int compareTo(ShardInfo other) {
        return path.compareTo(other.path);
    }

    @Override
    public String toString() {
        return "ShardInfo(" + path + ", " + numSamples + " samples, " + numBytes + " bytes)";
    }
}
