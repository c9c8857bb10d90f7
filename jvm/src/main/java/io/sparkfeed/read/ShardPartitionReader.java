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
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.catalyst.util.GenericArrayData;
import org.apache.spark.sql.connector.read.PartitionReader;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.BinaryType;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DateType;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.IntegerType;
import org.apache.spark.sql.types.LongType;
import org.apache.spark.sql.types.ShortType;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.TimestampNTZType;
import org.apache.spark.sql.types.TimestampType;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * Reads one tar shard as rows: consecutive members with one key form a sample; each output
 * column is decoded from its member (chosen once per column); a missing member gives null.
 * Members that are not regular files, or whose names hold a path, are an error naming the shard
 * and the member.
 */
final class ShardPartitionReader implements PartitionReader<InternalRow> {
    private static final ObjectMapper JSON = JsonMapper.builder()
        .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS).build();

    private final String shard;
    private final TarArchiveInputStream tar;
    private final int width;
    private final Map<String, Integer> memberSlot = new HashMap<>();
    private final byte[][] members;
    private final Decoder[] decoders;
    private final int keyColumn;
    private final int jsonSlot;
    private TarArchiveEntry pending;
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

    ShardPartitionReader(String shard, List<ReadColumn> columns, Configuration conf) {
        this.shard = shard;
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
                decoders[i] = memberDecoder(c.type, slot);
            }
        }
        this.keyColumn = key;
        this.jsonSlot = parseJson ? memberSlot.get(ReadColumn.JSON_MEMBER) : -1;
        this.members = new byte[memberSlot.size()][];
        try {
            Path path = new Path(shard);
            InputStream in = path.getFileSystem(conf).open(path);
            this.tar = new TarArchiveInputStream(new BufferedInputStream(in, 1 << 20),
                StandardCharsets.UTF_8.name());
            advance();
        } catch (IOException e) {
            throw new IllegalStateException("cannot open webdataset shard " + shard, e);
        }
    }

    private Decoder memberDecoder(DataType type, int slot) {
        if (type instanceof BinaryType) {
            return (m, json) -> m[slot];
        }
        if (type instanceof StringType) {
            return (m, json) -> m[slot] == null ? null : UTF8String.fromBytes(m[slot]);
        }
        ValueDecoder value = valueDecoder(type);
        return (m, json) -> {
            if (m[slot] == null) return null;
            String text = new String(m[slot], StandardCharsets.UTF_8).trim();
            return value.decode(JSON.readTree(text));
        };
    }

    static ValueDecoder valueDecoder(DataType type) {
        if (type instanceof BooleanType) return JsonNode::asBoolean;
        if (type instanceof ByteType) return n -> (byte) n.asLong();
        if (type instanceof ShortType) return n -> (short) n.asLong();
        if (type instanceof IntegerType) return n -> (int) n.asLong();
        if (type instanceof LongType) return JsonNode::asLong;
        if (type instanceof FloatType) return n -> (float) n.asDouble();
        if (type instanceof DoubleType) return JsonNode::asDouble;
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

    private static long micros(LocalDateTime t) {
        long seconds = t.toEpochSecond(ZoneOffset.UTC);
        return Math.addExact(Math.multiplyExact(seconds, 1_000_000L), t.getNano() / 1000);
    }

    /** Reads the next regular member into pending (null at the end). */
    private void advance() throws IOException {
        pending = tar.getNextEntry();
        while (pending != null && pending.isDirectory()) {
            pending = tar.getNextEntry();
        }
        if (pending == null) {
            return;
        }
        String name = pending.getName();
        if (!pending.isFile() || name.startsWith("/") || name.contains("..")) {
            throw new IllegalStateException("webdataset shard " + shard + ": member \"" + name
                + "\" is not a regular file inside the dataset (link, device or escaping path)");
        }
        String base = name.substring(name.lastIndexOf('/') + 1);
        int dot = base.indexOf('.');
        pendingKey = dot < 0 ? name : name.substring(0, name.length() - base.length() + dot);
        pendingExt = dot < 0 ? "" : base.substring(dot + 1);
        pendingData = tar.readAllBytes();
    }

    @Override
    public boolean next() throws IOException {
        if (pending == null) {
            return false;
        }
        String key = pendingKey;
        Arrays.fill(members, null);
        while (pending != null && pendingKey.equals(key)) {
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
            }
            Object[] values = new Object[width];
            for (int i = 0; i < width; i++) {
                values[i] = i == keyColumn ? UTF8String.fromString(key) : decoders[i].decode(members, json);
            }
            current = new GenericInternalRow(values);
        } catch (RuntimeException | IOException e) {
            throw new IllegalStateException("webdataset shard " + shard + ": cannot decode sample \""
                + key + "\": " + e.getMessage(), e);
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
