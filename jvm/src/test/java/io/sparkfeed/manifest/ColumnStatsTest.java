package io.sparkfeed.manifest;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;

import java.util.Map;

import org.apache.spark.sql.catalyst.expressions.GenericInternalRow;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.unsafe.types.UTF8String;
import org.junit.Test;

public class ColumnStatsTest {
    private static Map<String, Object> stats(DataType type, Object... values) {
        ColumnStats s = ColumnStats.forColumn(type, 1);
        for (Object v : values) {
            s.update(new GenericInternalRow(new Object[] {"other", v}));
        }
        return s.summary();
    }

    private static void check(Map<String, Object> s, Object min, Object max, long nulls) {
        assertEquals(min, s.get("min"));
        assertEquals(max, s.get("max"));
        assertEquals(nulls, s.get("null_count"));
    }

    @Test
    public void integers() {
        check(stats(DataTypes.IntegerType, 3, null, -7, 12, null), -7L, 12L, 2);
        check(stats(DataTypes.LongType, Long.MAX_VALUE, Long.MIN_VALUE), Long.MIN_VALUE,
            Long.MAX_VALUE, 0);
        check(stats(DataTypes.ShortType, (short) 4), 4L, 4L, 0);
        check(stats(DataTypes.ByteType, (byte) -1, (byte) 1), -1L, 1L, 0);
    }

    @Test
    public void floatingIgnoresNaNAndWidensFloatsExactly() {
        check(stats(DataTypes.DoubleType, 0.5, Double.NaN, -2.25, null), -2.25, 0.5, 1);
        check(stats(DataTypes.FloatType, 0.1f, 3f), (double) 0.1f, 3.0, 0);
        check(stats(DataTypes.DoubleType, Double.NaN), null, null, 0);
    }

    @Test
    public void stringsCompareByUtf8Bytes() {
        check(stats(DataTypes.StringType, UTF8String.fromString("b"), UTF8String.fromString("é"),
            UTF8String.fromString("a"), null, UTF8String.fromString("Z")), "Z", "é", 1);
    }

    @Test
    public void longStringsAreCutToValidBoundsAsTheParquetManifestCutsThem() {
        String a = "a".repeat(64);
        check(stats(DataTypes.StringType, UTF8String.fromString(a + "zzz"),
            UTF8String.fromString("b".repeat(63) + "c" + "q")), a, "b".repeat(63) + "d", 0);
        String exact = "x".repeat(64);   // 64 characters: kept whole
        check(stats(DataTypes.StringType, UTF8String.fromString(exact)), exact, exact, 0);
        String top = new String(Character.toChars(Character.MAX_CODE_POINT)).repeat(65);
        check(stats(DataTypes.StringType, UTF8String.fromString("a"), UTF8String.fromString(top)),
            null, null, 0);   // a max that cannot be rounded up: no range
        String wide = "é".repeat(63) + "\uD7FF" + "tail";   // code points, not UTF-16 units
        check(stats(DataTypes.StringType, UTF8String.fromString(wide)),
            "é".repeat(63) + "\uD7FF", "é".repeat(63) + "\uE000", 0);
    }

    @Test
    public void booleans() {
        check(stats(DataTypes.BooleanType, true, true), true, true, 0);
        check(stats(DataTypes.BooleanType, true, false, null), false, true, 1);
    }

    @Test
    public void datesAndTimestampsAsIsoStrings() {
        check(stats(DataTypes.DateType, 19_000, 0, null), "1970-01-01", "2022-01-08", 1);
        check(stats(DataTypes.TimestampType, 1_000_001L, -1L),
            "1969-12-31T23:59:59.999999+00:00", "1970-01-01T00:00:01.000001+00:00", 0);
        check(stats(DataTypes.TimestampNTZType, 0L), "1970-01-01T00:00:00.000000",
            "1970-01-01T00:00:00.000000", 0);
    }

    @Test
    public void allNullGivesNullMinMax() {
        check(stats(DataTypes.IntegerType, null, null), null, null, 2);
        check(stats(DataTypes.StringType, (Object) null), null, null, 1);
    }

    @Test
    public void noStatsForBinaryAndLists() {
        assertNull(ColumnStats.forColumn(DataTypes.BinaryType, 0));
        assertNull(ColumnStats.forColumn(DataTypes.createArrayType(DataTypes.FloatType), 0));
        assertEquals(false, ArrowTypes.hasStats(DataTypes.BinaryType));
    }
}
