package io.sparkfeed.read;

import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import io.sparkfeed.SafePath;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.BinaryType;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DateType;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.TimestampNTZType;
import org.apache.spark.sql.types.TimestampType;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * Reads one tar shard as rows: consecutive members with one key form a sample; each output
 * column is decoded from its member (chosen once per column); a missing member gives null.
 * Members in no sample ("README", "a.", webdataset metadata) are skipped, as Python's reader
 * skips them. Links, devices, unsafe names, damaged headers, a key in two places and a member
 * twice in a sample are an error naming the dataset, the shard and the member's tar offset, in
 * the words of Python's reader (read/tar.py).
 */
final class ShardPartitionReader implements PartitionReader<InternalRow> {
    private static final ObjectMapper JSON = JsonMapper.builder()
        .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS).build();

    /** Python's limit (read.tar.MAX_MEMBER_BYTES): a bigger member is refused, not read. */
    static final long MAX_MEMBER_BYTES = 1L << 30;

    private final String dataset;
    private final String shardName;
    private final StrictTarStream tar;
    private final Set<String> seenKeys = new HashSet<>();
    private final Set<String> sampleExtensions = new HashSet<>();  // the sample's, for repeats
    private final byte[] scratch = new byte[1 << 16];
    private final int width;
    private final Map<String, Integer> memberSlot = new HashMap<>();
    private final byte[][] members;
    private final Decoder[] decoders;
    private final int keyColumn;
    private final int jsonSlot;
    private TarArchiveEntry pending;
    private long pendingAt;   // the tar offset of pending's (first) header
    private long nextHeader;  // where the header after pending starts
    private byte[] pendingData;
    private String pendingKey;
    private String pendingExt;
    private InternalRow current;

    /** Decodes one column from the sample's members (json: the parsed json member). */
    interface Decoder {
        Object decode(byte[][] members, JsonNode json) throws IOException;
    }

    interface ValueDecoder {
        Object decode(JsonNode node);
    }

    ShardPartitionReader(ShardInputPartition shard, List<ReadColumn> columns, Configuration conf) {
        this.dataset = shard.dataset;
        this.shardName = shard.name;
        this.width = columns.size();
        this.decoders = new Decoder[width];
        int key = -1;
        boolean parseJson = false;
        for (int i = 0; i < width; i++) {
            ReadColumn c = columns.get(i);
            if (c.member.equals(ReadColumn.KEY_MEMBER)) {
                key = i;
            } else if (c.member.equals(ReadColumn.JSON_MEMBER) && !(c.type instanceof BinaryType)
                    && !(c.type instanceof StringType)) {
                // Scalars kept together in the .json object (the writer never puts strings
                // there: they go to .txt); a string column of member json is the raw text, as
                // `sparkfeed.index` describes a tar's .json members.
                parseJson = true;
                memberSlot.putIfAbsent(ReadColumn.JSON_MEMBER, memberSlot.size());
                ValueDecoder value = valueDecoder(c.type);
                String field = c.name;
                decoders[i] = (m, json) -> {
                    JsonNode node = json == null ? null : json.get(field);
                    return node == null || node.isNull() ? null : value.decode(node);
                };
            } else {
                int slot = memberSlot.computeIfAbsent(c.member, k -> memberSlot.size());
                decoders[i] = memberDecoder(c.type, slot, c.member);
            }
        }
        this.keyColumn = key;
        this.jsonSlot = parseJson ? memberSlot.get(ReadColumn.JSON_MEMBER) : -1;
        this.members = new byte[memberSlot.size()][];
        try {
            Path path = new Path(shard.path);
            InputStream in = path.getFileSystem(conf).open(path);
            this.tar = StrictTarStream.of(new BufferedInputStream(in, 1 << 20));
        } catch (IOException e) {
            throw error("cannot open the shard (" + e.getMessage() + ")", 0, e);
        }
        try {
            advance();
        } catch (IOException | RuntimeException e) {
            closeQuietly();  // Spark closes no reader whose constructor failed
            throw e instanceof IllegalStateException ? (IllegalStateException) e
                : error("cannot read the shard (" + e.getMessage() + ")", pendingAt, e);
        }
    }

    private void closeQuietly() {
        try {
            tar.close();
        } catch (IOException e) {
            // the read's own error is the one to report
        }
    }

    private Decoder memberDecoder(DataType type, int slot, String member) {
        if (type instanceof BinaryType) {
            return (m, json) -> m[slot];
        }
        if (type instanceof StringType) {
            return (m, json) -> m[slot] == null ? null : text(m[slot], member);
        }
        if (IntegerValues.isInteger(type)) {
            return (m, json) -> m[slot] == null ? null
                : IntegerValues.fromText(new String(m[slot], StandardCharsets.UTF_8), type);
        }
        ValueDecoder value = valueDecoder(type);
        return (m, json) -> {
            if (m[slot] == null) return null;
            String text = new String(m[slot], StandardCharsets.UTF_8).trim();
            return value.decode(JSON.readTree(text));
        };
    }

    /** A string member's text: UTF-8, as the Python reader demands (Spark would keep bad bytes
     * and show each as U+FFFD). */
    private static UTF8String text(byte[] data, String member) {
        UTF8String s = UTF8String.fromBytes(data);
        if (!s.isValid()) {
            throw new IllegalArgumentException("member ." + member + " cannot be read as string "
                + "(not UTF-8)");
        }
        return s;
    }

    static ValueDecoder valueDecoder(DataType type) {
        if (type instanceof BooleanType) return n -> expect(n, n.isBoolean(), "true or false", type).asBoolean();
        if (IntegerValues.isInteger(type)) return n -> IntegerValues.fromJson(n, type);
        if (type instanceof FloatType) return n -> (float) expect(n, n.isNumber(), "a number", type).asDouble();
        if (type instanceof DoubleType) return n -> expect(n, n.isNumber(), "a number", type).asDouble();
        if (type instanceof StringType) return n -> UTF8String.fromString(n.asText());
        if (type instanceof DecimalType) {
            DecimalType d = (DecimalType) type;
            return n -> Decimal.apply(new BigDecimal(n.asText()), d.precision(), d.scale());
        }
        if (type instanceof DateType) return n -> (int) LocalDate.parse(n.asText()).toEpochDay();
        if (type instanceof TimestampType) {
            return n -> micros(OffsetDateTime.parse(n.asText()).withOffsetSameInstant(ZoneOffset.UTC)
                .toLocalDateTime());
        }
        if (type instanceof TimestampNTZType) return n -> micros(LocalDateTime.parse(n.asText()));
        if (type instanceof ArrayType) {
            ValueDecoder element = valueDecoder(((ArrayType) type).elementType());
            return n -> {
                expect(n, n.isArray(), "a list", type);
                Object[] out = new Object[n.size()];
                for (int i = 0; i < out.length; i++) {
                    JsonNode e = n.get(i);
                    out[i] = e.isNull() ? null : element.decode(e);
                }
                return new GenericArrayData(out);
            };
        }
        throw new IllegalArgumentException("format(\"webdataset\") cannot read type "
            + type.simpleString());
    }

    /** n itself where ok; else the error saying what the column's type needs (before, asDouble
     * and asBoolean made 0.0, 1.0 or false of any other JSON value without a word). */
    private static JsonNode expect(JsonNode n, boolean ok, String what, DataType type) {
        if (!ok) {
            String text = n.toString();
            throw new IllegalArgumentException("value " + (text.length() > 40 ? text.substring(0, 40)
                + "..." : text) + " is not " + what + ", as " + type.simpleString() + " needs");
        }
        return n;
    }

    private static long micros(LocalDateTime t) {
        long seconds = t.toEpochSecond(ZoneOffset.UTC);
        return Math.addExact(Math.multiplyExact(seconds, 1_000_000L), t.getNano() / 1000);
    }

    /**
     * Reads the next sample member into pending (null at the end): directories and members in
     * no sample ({@link MemberNames#isSampleMember}) are skipped as Python's reader skips them;
     * links, devices, unsafe names, oversized members and damaged headers are an error at the
     * member's tar offset.
     */
    private void advance() throws IOException {
        while (true) {
            pendingAt = nextHeader;
            try {
                pending = tar.getNextEntry();
            } catch (StrictTarStream.HeaderException e) {
                throw error(e.reason, e.offset, e);
            } catch (IOException | RuntimeException e) {
                throw error("corrupt tar: the member header here cannot be read (" + e.getMessage()
                    + "); the members after it would be lost", pendingAt, e);
            }
            if (pending == null) {
                return;
            }
            nextHeader = tar.position() + StrictTarStream.padded(pending.getSize());
            if (isDirectory(pending)) {
                continue;
            }
            check(pending);
            String name = pending.getName();
            boolean inSample = MemberNames.isSampleMember(name);
            pendingKey = inSample ? MemberNames.key(name) : null;
            pendingExt = inSample ? MemberNames.extension(name) : null;
            pendingData = readData(pending, inSample && memberSlot.containsKey(pendingExt));
            if (inSample) {
                return;
            }
        }
    }

    /** Python's tarfile takes type 0 with a trailing "/" and type 5 for a directory. */
    private static boolean isDirectory(TarArchiveEntry e) {
        byte type = e.getLinkFlag();
        return type == TarArchiveEntry.LF_DIR || (type == 0 && e.getName().endsWith("/"));
    }

    /** Refuses what Python's reader refuses (read.tar's _check_member), with its words. */
    private void check(TarArchiveEntry e) {
        String name = e.getName();
        byte type = e.getLinkFlag();
        if (e.isSymbolicLink() || e.isLink()) {
            throw error("member " + MemberNames.quote(name) + " is a link; links are refused",
                pendingAt, null);
        }
        if (type != TarArchiveEntry.LF_NORMAL && type != TarArchiveEntry.LF_OLDNORM
                && type != TarArchiveEntry.LF_CONTIG && !e.isGNUSparse()) {
            String shown = type >= 0x20 && type < 0x7F ? String.valueOf((char) type)
                : String.format("\\x%02x", type & 0xFF);
            throw error("member " + MemberNames.quote(name) + " is not a regular file (type b'"
                + shown + "')", pendingAt, null);
        }
        String problem = SafePath.problem(name);  // the same rule as manifest paths and Python
        if (problem != null) {
            throw error("member name " + MemberNames.quote(name) + " could escape the dataset: it "
                + problem, pendingAt, null);
        }
        if (e.getSize() > MAX_MEMBER_BYTES) {
            throw error("member " + MemberNames.quote(name) + " is " + e.getSize() + " bytes, over "
                + "the " + MAX_MEMBER_BYTES + "-byte limit", pendingAt, null);
        }
    }

    /** The member's bytes (keep: else read and dropped, so a tar cut short inside any member's
     * data is an error, never a silent end of the shard). */
    private byte[] readData(TarArchiveEntry e, boolean keep) throws IOException {
        long size = e.getSize();
        long start = tar.position();
        byte[] data = null;
        long got;
        try {
            if (keep) {
                data = tar.readNBytes((int) size);
                got = data.length;
            } else {
                got = 0;
                for (int n; got < size && (n = tar.read(scratch, 0,
                        (int) Math.min(scratch.length, size - got))) > 0; ) {
                    got += n;
                }
            }
        } catch (IOException ex) {
            if (!(ex instanceof java.io.EOFException) && !String.valueOf(ex.getMessage())
                    .startsWith("Truncated TAR archive")) {
                throw error("cannot read the data of member " + MemberNames.quote(e.getName())
                    + " (" + ex + ")", pendingAt, ex);
            }
            got = -1;  // commons-compress: the file ends inside the member's data
        }
        if (got != size) {
            throw error("the tar is cut short inside the data of member " + MemberNames.quote(
                e.getName()) + " (" + size + " bytes from tar offset " + start + ")", pendingAt, null);
        }
        return data;
    }

    /** The error naming the dataset, the shard and the tar offset, worded as Python's. */
    private IllegalStateException error(String message, long offset, Throwable cause) {
        String where = (dataset == null ? "" : "dataset " + MemberNames.quote(dataset) + ", ")
            + "shard " + MemberNames.quote(shardName) + ", tar offset " + offset;
        return new IllegalStateException(where + ": " + message, cause);
    }

    @Override
    public boolean next() throws IOException {
        if (pending == null) {
            return false;
        }
        String key = pendingKey;
        long start = pendingAt;
        if (!seenKeys.add(key)) {
            throw error("key " + MemberNames.quote(key) + " appears in two places; members of a "
                + "sample must be adjacent, as webdataset reads them (a tar of a directory: make "
                + "it with `tar --sort=name`)", start, null);
        }
        Arrays.fill(members, null);
        sampleExtensions.clear();
        while (pending != null && pendingKey.equals(key)) {
            if (!sampleExtensions.add(pendingExt)) {
                throw error("sample " + MemberNames.quote(key) + " has two ." + pendingExt
                    + " members", pendingAt, null);
            }
            Integer slot = memberSlot.get(pendingExt);
            if (slot != null) {
                members[slot] = pendingData;
            }
            advance();
        }
        JsonNode json = null;
        try {
            if (jsonSlot >= 0 && members[jsonSlot] != null) {
                json = JSON.readTree(members[jsonSlot]);
                if (json != null && !json.isObject()) {
                    throw new IllegalArgumentException("member .json holds " + (json.isMissingNode()
                        ? "no JSON value" : "a JSON " + json.getNodeType().toString().toLowerCase())
                        + ", not an object");
                }
            }
            Object[] values = new Object[width];
            for (int i = 0; i < width; i++) {
                values[i] = i == keyColumn ? UTF8String.fromString(key) : decoders[i].decode(members, json);
            }
            current = new GenericInternalRow(values);
        } catch (RuntimeException | IOException e) {
            throw error("sample " + MemberNames.quote(key) + ": cannot decode it: " + e.getMessage(),
                start, e);
        }
        return true;
    }

    @Override
    public InternalRow get() {
        return current;
    }

    @Override
    public void close() throws IOException {
        tar.close();
    }
}
