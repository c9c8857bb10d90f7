package io.sparkfeed.write;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.math.BigDecimal;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.List;

import com.fasterxml.jackson.core.JsonEncoding;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.json.JsonWriteFeature;
import io.sparkfeed.manifest.ColumnStats;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.catalyst.expressions.SpecializedGetters;
import org.apache.spark.sql.catalyst.util.ArrayData;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DateType;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.IntegerType;
import org.apache.spark.sql.types.LongType;
import org.apache.spark.sql.types.ShortType;
import org.apache.spark.sql.types.TimestampNTZType;
import org.apache.spark.sql.types.TimestampType;

/**
 * Turns one row into the members of one sample. The converters are chosen once per column from
 * the {@link SampleLayout}; the buffers are reused; the per-row path only runs them.
 *
 * <p>Nulls: a null binary, cls or txt value omits that member; a null value inside the json
 * member is written as JSON null.
 */
final class SampleEncoder {
    private final MemberWriter[] writers;

    SampleEncoder(SampleLayout layout) {
        List<MemberWriter> out = new ArrayList<>();
        List<FieldWriter> jsonFields = new ArrayList<>();
        List<String> jsonNames = new ArrayList<>();
        for (SampleLayout.Member m : layout.members()) {
            switch (m.kind) {
                case BINARY: out.add(new BinaryMember(m.ordinal, m.ext)); break;
                case CLS: out.add(new ClsMember(m.ordinal, m.ext, longGetter(m.type))); break;
                case TXT: out.add(new TextMember(m.ordinal, m.ext)); break;
                case JSON:
                    jsonFields.add(fieldWriter(m.type, m.ordinal));
                    jsonNames.add(m.column);
                    break;
                default: break;
            }
        }
        if (!jsonFields.isEmpty()) {
            out.add(new JsonMember(jsonNames, jsonFields));
        }
        this.writers = out.toArray(new MemberWriter[0]);
    }

    /** Writes the members of this row as sample {@code key}. */
    void write(InternalRow row, String key, TarShardWriter tar) throws IOException {
        tar.beginSample(key);
        for (MemberWriter w : writers) {
            w.write(row, tar);
        }
        tar.endSample();
    }

    interface MemberWriter {
        void write(InternalRow row, TarShardWriter tar) throws IOException;
    }

    interface LongGetter { long get(SpecializedGetters row, int ordinal); }

    interface FieldWriter {
        void write(SpecializedGetters row, int ordinal, JsonGenerator gen) throws IOException;
    }

    static LongGetter longGetter(DataType type) {
        if (type instanceof ByteType) return (r, i) -> r.getByte(i);
        if (type instanceof ShortType) return (r, i) -> r.getShort(i);
        if (type instanceof IntegerType) return (r, i) -> r.getInt(i);
        return SpecializedGetters::getLong;
    }

    static final class BinaryMember implements MemberWriter {
        private final int ordinal;
        private final String ext;

        BinaryMember(int ordinal, String ext) {
            this.ordinal = ordinal;
            this.ext = ext;
        }

        @Override
        public void write(InternalRow row, TarShardWriter tar) throws IOException {
            if (!row.isNullAt(ordinal)) {
                byte[] data = row.getBinary(ordinal);
                tar.addMember(ext, data, 0, data.length);
            }
        }
    }

    static final class ClsMember implements MemberWriter {
        private final int ordinal;
        private final String ext;
        private final LongGetter getter;
        private final byte[] digits = new byte[20];

        ClsMember(int ordinal, String ext, LongGetter getter) {
            this.ordinal = ordinal;
            this.ext = ext;
            this.getter = getter;
        }

        @Override
        public void write(InternalRow row, TarShardWriter tar) throws IOException {
            if (!row.isNullAt(ordinal)) {
                String text = Long.toString(getter.get(row, ordinal));
                int n = text.length();
                for (int i = 0; i < n; i++) digits[i] = (byte) text.charAt(i);
                tar.addMember(ext, digits, 0, n);
            }
        }
    }

    static final class TextMember implements MemberWriter {
        private final int ordinal;
        private final String ext;

        TextMember(int ordinal, String ext) {
            this.ordinal = ordinal;
            this.ext = ext;
        }

        @Override
        public void write(InternalRow row, TarShardWriter tar) throws IOException {
            if (!row.isNullAt(ordinal)) {
                byte[] data = row.getUTF8String(ordinal).getBytes();
                tar.addMember(ext, data, 0, data.length);
            }
        }
    }

    /** One JSON object for all the remaining scalar columns, keyed by column name. */
    static final class JsonMember implements MemberWriter {
        private static final JsonFactory FACTORY = JsonFactory.builder()
            .disable(JsonWriteFeature.WRITE_NAN_AS_STRINGS).build();
        private final String[] names;
        private final FieldWriter[] fields;
        private final Buffer buffer = new Buffer();

        JsonMember(List<String> names, List<FieldWriter> fields) {
            this.names = names.toArray(new String[0]);
            this.fields = fields.toArray(new FieldWriter[0]);
        }

        @Override
        public void write(InternalRow row, TarShardWriter tar) throws IOException {
            buffer.reset();
            try (JsonGenerator gen = FACTORY.createGenerator(buffer, JsonEncoding.UTF8)) {
                gen.writeStartObject();
                for (int i = 0; i < fields.length; i++) {
                    gen.writeFieldName(names[i]);
                    fields[i].write(row, -1, gen);
                }
                gen.writeEndObject();
            }
            tar.addMember(SampleLayout.JSON_EXT, buffer.bytes(), 0, buffer.size());
        }
    }

    /** A ByteArrayOutputStream whose array is reused rather than copied. */
    static final class Buffer extends ByteArrayOutputStream {
        byte[] bytes() {
            return buf;
        }
    }

    /** The writer of one column of the row (its ordinal fixed here; null as JSON null). */
    static FieldWriter fieldWriter(DataType type, int ordinal) {
        FieldWriter value = valueWriter(type);
        return (row, ignored, gen) -> {
            if (row.isNullAt(ordinal)) {
                gen.writeNull();
            } else {
                value.write(row, ordinal, gen);
            }
        };
    }

    /** Writes the non-null value at ordinal of a row or an array. */
    static FieldWriter valueWriter(DataType type) {
        if (type instanceof BooleanType) return (r, i, g) -> g.writeBoolean(r.getBoolean(i));
        if (type instanceof ByteType) return (r, i, g) -> g.writeNumber(r.getByte(i));
        if (type instanceof ShortType) return (r, i, g) -> g.writeNumber(r.getShort(i));
        if (type instanceof IntegerType) return (r, i, g) -> g.writeNumber(r.getInt(i));
        if (type instanceof LongType) return (r, i, g) -> g.writeNumber(r.getLong(i));
        if (type instanceof FloatType) return (r, i, g) -> g.writeNumber(r.getFloat(i));
        if (type instanceof DoubleType) return (r, i, g) -> g.writeNumber(r.getDouble(i));
        if (type instanceof DecimalType) {
            DecimalType d = (DecimalType) type;
            return (r, i, g) -> {
                BigDecimal v = r.getDecimal(i, d.precision(), d.scale()).toJavaBigDecimal();
                g.writeNumber(v);
            };
        }
        if (type instanceof DateType) {
            return (r, i, g) -> g.writeString(LocalDate.ofEpochDay(r.getInt(i)).toString());
        }
        if (type instanceof TimestampType) {
            return (r, i, g) -> g.writeString(
                ColumnStats.timestampString(r.getLong(i)) + "+00:00");
        }
        if (type instanceof TimestampNTZType) {
            return (r, i, g) -> g.writeString(
                ColumnStats.timestampString(r.getLong(i)));
        }
        if (type instanceof ArrayType) {
            FieldWriter element = valueWriter(((ArrayType) type).elementType());
            return (r, i, g) -> {
                ArrayData array = r.getArray(i);
                int n = array.numElements();
                g.writeStartArray();
                for (int k = 0; k < n; k++) {
                    if (array.isNullAt(k)) g.writeNull(); else element.write(array, k, g);
                }
                g.writeEndArray();
            };
        }
        throw new IllegalArgumentException("no JSON writer for " + type.simpleString());
    }
}
