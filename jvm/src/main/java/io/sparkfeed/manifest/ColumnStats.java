package io.sparkfeed.manifest;

import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;

import org.apache.spark.sql.catalyst.expressions.SpecializedGetters;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DateType;
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
 * min / max / null_count of one column over one shard, for the manifest's shard stats.
 *
 * <p>One subclass per kind of value, chosen once per column ({@link #forColumn}); the per-row
 * {@link #update} only compares. Floating NaN values are left out of min/max (they are not
 * orderable); a shard whose values are all null (or NaN) has min and max null. An infinite bound
 * makes both null (no range, as the Parquet writer's manifest has it): JSON has no infinity, and
 * a manifest holding a bare {@code Infinity} is refused by strict parsers. Strings compare by
 * UTF-8 bytes (as Arrow and Parquet do); dates are written as ISO {@code YYYY-MM-DD}; timestamps
 * as ISO {@code YYYY-MM-DDTHH:MM:SS.ffffff+00:00} (UTC) or without offset (timestamp_ntz).
 */
public abstract class ColumnStats {
    private static final DateTimeFormatter TIMESTAMP =
        DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSSSSS", Locale.ROOT);

    /**
     * Longer string bounds are cut, as the Parquet writer's manifest cuts them: min to a prefix
     * of this many characters (code points), max to that prefix rounded up. Both stay valid
     * bounds, and a manifest of a caption column stays small.
     */
    public static final int STRING_STATS_MAX_CHARS = 64;

    protected final int ordinal;
    protected long nullCount;

    protected ColumnStats(int ordinal) {
        this.ordinal = ordinal;
    }

    /** The accumulator for a column of this type at this ordinal, or null when it has no stats. */
    public static ColumnStats forColumn(DataType type, int ordinal) {
        if (type instanceof ByteType) return new Integral(ordinal, (r, i) -> r.getByte(i));
        if (type instanceof ShortType) return new Integral(ordinal, (r, i) -> r.getShort(i));
        if (type instanceof IntegerType) return new Integral(ordinal, (r, i) -> r.getInt(i));
        if (type instanceof LongType) return new Integral(ordinal, SpecializedGetters::getLong);
        if (type instanceof FloatType) return new Floating(ordinal, (r, i) -> r.getFloat(i));
        if (type instanceof DoubleType) return new Floating(ordinal, SpecializedGetters::getDouble);
        if (type instanceof StringType) return new Text(ordinal);
        if (type instanceof BooleanType) return new Bool(ordinal);
        if (type instanceof DateType) {
            return new Integral(ordinal, (r, i) -> r.getInt(i),
                v -> LocalDate.ofEpochDay(v).toString());
        }
        if (type instanceof TimestampType) {
            return new Integral(ordinal, SpecializedGetters::getLong,
                v -> timestampString(v) + "+00:00");
        }
        if (type instanceof TimestampNTZType) {
            return new Integral(ordinal, SpecializedGetters::getLong, ColumnStats::timestampString);
        }
        return null;
    }

    /** ISO local date-time with microseconds, e.g. 2024-01-02T03:04:05.000006. */
    public static String timestampString(long micros) {
        long seconds = Math.floorDiv(micros, 1_000_000L);
        int nanos = (int) Math.floorMod(micros, 1_000_000L) * 1000;
        return LocalDateTime.ofEpochSecond(seconds, nanos, ZoneOffset.UTC).format(TIMESTAMP);
    }

    /** Accounts for the value at {@code ordinal} of this row. */
    public final void update(SpecializedGetters row) {
        if (row.isNullAt(ordinal)) {
            nullCount++;
        } else {
            updateValue(row);
        }
    }

    protected abstract void updateValue(SpecializedGetters row);

    protected abstract Object min();

    protected abstract Object max();

    /** {"min": ..., "max": ..., "null_count": ...} with JSON-ready values. */
    public final Map<String, Object> summary() {
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("min", min());
        out.put("max", max());
        out.put("null_count", nullCount);
        return out;
    }

    interface LongGetter { long get(SpecializedGetters row, int ordinal); }

    interface DoubleGetter { double get(SpecializedGetters row, int ordinal); }

    interface LongFormat { Object format(long value); }

    static final class Integral extends ColumnStats {
        private final LongGetter getter;
        private final LongFormat format;
        private long min = Long.MAX_VALUE;
        private long max = Long.MIN_VALUE;
        private boolean seen;

        Integral(int ordinal, LongGetter getter) {
            this(ordinal, getter, v -> v);
        }

        Integral(int ordinal, LongGetter getter, LongFormat format) {
            super(ordinal);
            this.getter = getter;
            this.format = format;
        }

        @Override
        protected void updateValue(SpecializedGetters row) {
            long v = getter.get(row, ordinal);
            if (v < min) min = v;
            if (v > max) max = v;
            seen = true;
        }

        @Override protected Object min() { return seen ? format.format(min) : null; }
        @Override protected Object max() { return seen ? format.format(max) : null; }
    }

    static final class Floating extends ColumnStats {
        private final DoubleGetter getter;
        private double min = Double.POSITIVE_INFINITY;
        private double max = Double.NEGATIVE_INFINITY;
        private boolean seen;

        Floating(int ordinal, DoubleGetter getter) {
            super(ordinal);
            this.getter = getter;
        }

        @Override
        protected void updateValue(SpecializedGetters row) {
            double v = getter.get(row, ordinal);
            if (Double.isNaN(v)) return;
            if (v < min) min = v;
            if (v > max) max = v;
            seen = true;
        }

        /** A range exists when some value was seen and both bounds are finite. */
        private boolean ranged() {
            return seen && Double.isFinite(min) && Double.isFinite(max);
        }

        @Override protected Object min() { return ranged() ? min : null; }
        @Override protected Object max() { return ranged() ? max : null; }
    }

    /** The stats of the sample keys as written (after sanitising), fed by {@link Text#add}. */
    public static Text forKeys() {
        return new Text(-1);
    }

    /** Strings, compared by UTF-8 bytes. */
    public static final class Text extends ColumnStats {
        private UTF8String min;
        private UTF8String max;

        Text(int ordinal) {
            super(ordinal);
        }

        @Override
        protected void updateValue(SpecializedGetters row) {
            add(row.getUTF8String(ordinal));
        }

        /** Accounts for one non-null value (copied when kept: the caller may reuse it). */
        public void add(UTF8String v) {
            if (min == null || v.binaryCompare(min) < 0) min = v.clone();
            if (max == null || v.binaryCompare(max) > 0) max = v.clone();
        }

        @Override
        protected Object min() {
            if (min == null || roundedUp(max.toString()) == null) {
                return null;   // no usable range without a max
            }
            String s = min.toString();
            return s.codePointCount(0, s.length()) <= STRING_STATS_MAX_CHARS
                ? s : s.substring(0, s.offsetByCodePoints(0, STRING_STATS_MAX_CHARS));
        }

        @Override
        protected Object max() {
            return max == null ? null : roundedUp(max.toString());
        }

        /**
         * {@code s}, or past {@link #STRING_STATS_MAX_CHARS} the shortest string built from its
         * prefix that is above every string with that prefix (null when there is none).
         */
        static String roundedUp(String s) {
            if (s.codePointCount(0, s.length()) <= STRING_STATS_MAX_CHARS) {
                return s;
            }
            int[] points = s.codePoints().limit(STRING_STATS_MAX_CHARS).toArray();
            for (int i = points.length - 1; i >= 0; i--) {
                int next = points[i] + 1;
                if (next >= 0xD800 && next <= 0xDFFF) {
                    next = 0xE000;
                }
                if (next <= Character.MAX_CODE_POINT) {
                    points[i] = next;
                    return new String(points, 0, i + 1);
                }
            }
            return null;
        }
    }

    static final class Bool extends ColumnStats {
        private boolean anyTrue;
        private boolean anyFalse;

        Bool(int ordinal) {
            super(ordinal);
        }

        @Override
        protected void updateValue(SpecializedGetters row) {
            if (row.getBoolean(ordinal)) anyTrue = true; else anyFalse = true;
        }

        @Override protected Object min() { return anyFalse ? Boolean.FALSE : anyTrue ? Boolean.TRUE : null; }
        @Override protected Object max() { return anyTrue ? Boolean.TRUE : anyFalse ? Boolean.FALSE : null; }
    }
}
