package io.sparkfeed.write;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;
import java.util.Set;

import io.sparkfeed.DatasetDir;
import org.apache.hadoop.fs.Path;

/**
 * The sample keys of a webdataset write, as 64-bit hashes, so that the driver's commit can refuse
 * a key written in two shards (of one task or of two) without holding the keys: each task
 * writer adds its shards' key hashes, sorted, to its commit message (8 bytes a sample), and the
 * driver merges them. Equal hashes are confirmed against the keys themselves, read back from the
 * two shards' DALI indexes, so a hash collision of two distinct keys refuses nothing.
 */
public final class KeyDigest {
    /** The most duplicates a refusal names, and the most index files read to confirm them. */
    static final int SHOWN = 5;
    static final int MAX_INDEXES_READ = 100;

    private long[] hashes = new long[1024];
    private int size;

    private KeyDigest() {}

    /** An empty digest for one shard's keys. */
    static KeyDigest create() {
        return new KeyDigest();
    }

    void add(String key) {
        if (size == hashes.length) {
            hashes = Arrays.copyOf(hashes, size * 2);
        }
        hashes[size++] = hash(key);
    }

    /** The hashes added so far, sorted. */
    long[] sorted() {
        long[] out = Arrays.copyOf(hashes, size);
        Arrays.sort(out);
        return out;
    }

    /** FNV-1a over the key's chars, then Murmur3's 64-bit finaliser. */
    static long hash(String key) {
        long h = 0xcbf29ce484222325L;
        for (int i = 0; i < key.length(); i++) {
            h = (h ^ key.charAt(i)) * 0x100000001b3L;
        }
        h ^= h >>> 33;
        h *= 0xff51afd7ed558ccdL;
        h ^= h >>> 33;
        h *= 0xc4ceb9fe1a85ec53L;
        return h ^ (h >>> 33);
    }

    /** One key found in two shards. */
    static final class Duplicate {
        final String key;
        final String first;
        final String second;

        Duplicate(String key, String first, String second) {
            this.key = key;
            this.first = first;
            this.second = second;
        }

        @Override
        public String toString() {
            return "\"" + key + "\" (in " + first + " and " + second + ")";
        }
    }

    /**
     * Pairs of shards whose sorted hash arrays share a value, as (hash, shard i, shard j), found by
     * merging all arrays at once (memory: the arrays, already in the commit messages, and a heap
     * of one cursor per shard). Equal hashes inside one shard are two distinct keys (its writer
     * refuses a key twice in a shard) and are passed over.
     */
    static List<long[]> candidates(List<long[]> shards, int limit) {
        PriorityQueue<int[]> heap = new PriorityQueue<>((a, b) ->
            Long.compare(shards.get(a[0])[a[1]], shards.get(b[0])[b[1]]));
        for (int s = 0; s < shards.size(); s++) {
            if (shards.get(s).length > 0) heap.add(new int[] {s, 0});
        }
        List<long[]> out = new ArrayList<>();
        int lastShard = -1;
        long last = 0;
        while (!heap.isEmpty() && out.size() < limit) {
            int[] c = heap.poll();
            long h = shards.get(c[0])[c[1]];
            if (lastShard >= 0 && h == last && lastShard != c[0]) {
                out.add(new long[] {h, Math.min(lastShard, c[0]), Math.max(lastShard, c[0])});
            }
            lastShard = c[0];
            last = h;
            if (++c[1] < shards.get(c[0]).length) heap.add(c);
        }
        return out;
    }

    /**
     * Up to {@link #SHOWN} keys written in two shards, confirmed against the shards' indexes;
     * empty when every equal hash was a collision of distinct keys.
     * @param names the shards' file names, in the order of {@code shards}
     * @param indexes their DALI index file names
     */
    static List<Duplicate> duplicates(DatasetDir dir, List<String> names, List<String> indexes,
                                      List<long[]> shards) throws IOException {
        List<Duplicate> found = new ArrayList<>();
        Map<Integer, Map<Long, List<String>>> read = new HashMap<>();
        for (long[] c : candidates(shards, MAX_INDEXES_READ / 2)) {
            int a = (int) c[1], b = (int) c[2];
            if (found.size() >= SHOWN || read.size() >= MAX_INDEXES_READ) break;
            List<String> inA = keysOf(dir, indexes.get(a), read, a).getOrDefault(c[0], List.of());
            Set<String> inB = new HashSet<>(
                keysOf(dir, indexes.get(b), read, b).getOrDefault(c[0], List.of()));
            for (String key : inA) {
                if (inB.contains(key)) found.add(new Duplicate(key, names.get(a), names.get(b)));
            }
        }
        return found;
    }

    /** The keys of one shard by hash, read from its DALI index (member names are key.ext). */
    private static Map<Long, List<String>> keysOf(DatasetDir dir, String index,
                                                  Map<Integer, Map<Long, List<String>>> read,
                                                  int shard) throws IOException {
        Map<Long, List<String>> keys = read.get(shard);
        if (keys != null) return keys;
        keys = new HashMap<>();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(
                dir.fs.open(new Path(dir.root, index)), StandardCharsets.UTF_8))) {
            in.readLine();  // v1.2 <samples>
            for (String line; (line = in.readLine()) != null; ) {
                String[] fields = line.split(" ");
                if (fields.length < 4) continue;
                String name = fields[3];
                int dot = name.indexOf('.');
                String key = dot < 0 ? name : name.substring(0, dot);
                keys.computeIfAbsent(hash(key), h -> new ArrayList<>()).add(key);
            }
        }
        read.put(shard, keys);
        return keys;
    }
}
