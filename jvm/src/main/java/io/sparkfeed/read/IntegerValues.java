package io.sparkfeed.read;

import java.math.BigDecimal;
import java.math.BigInteger;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.IntegerType;
import org.apache.spark.sql.types.LongType;
import org.apache.spark.sql.types.ShortType;

/**
 * Integer columns read as the Python reader reads them: a member's bytes as Python's
 * {@code int()} parses them (webdataset's {@code .cls}: "007", "+5", "1_000", whitespace around),
 * a JSON field as a whole number; anything else, or a value outside the column's type, is an
 * error. Before, "007" failed (JSON allows no leading zero), 1.5 and true became 1 and a value
 * past the type's range wrapped around without a word.
 */
final class IntegerValues {
    private IntegerValues() {
    }

    static boolean isInteger(DataType type) {
        return type instanceof ByteType || type instanceof ShortType || type instanceof IntegerType
            || type instanceof LongType;
    }

    /** A member's text as Python's int() reads it, as the column's Java type. */
    static Object fromText(String text, DataType type) {
        String t = stripAsciiSpace(text);
        int i = t.startsWith("+") || t.startsWith("-") ? 1 : 0;
        boolean ok = i < t.length();
        for (int j = i; ok && j < t.length(); j++) {
            char c = t.charAt(j);
            ok = (c >= '0' && c <= '9') || (c == '_' && j > i && j + 1 < t.length()
                && isDigit(t.charAt(j - 1)) && isDigit(t.charAt(j + 1)));
        }
        if (!ok) {
            throw new IllegalArgumentException("member text \"" + brief(text) + "\" is not an "
                + "integer (Python's int() reads it as webdataset does)");
        }
        return fit(new BigInteger(t.replace("_", "")), type);
    }

    /** A JSON value as a whole number of the column's type (1.0 is 1; 1.5 is an error). */
    static Object fromJson(JsonNode n, DataType type) {
        BigInteger v;
        if (n.isIntegralNumber()) {
            v = n.bigIntegerValue();
        } else if (n.isFloatingPointNumber() && Double.isFinite(n.doubleValue())
                && n.doubleValue() == Math.rint(n.doubleValue())) {
            v = new BigDecimal(n.doubleValue()).toBigIntegerExact();
        } else {
            throw new IllegalArgumentException("value " + brief(n.toString()) + " is not a whole "
                + "number, as " + type.simpleString() + " needs");
        }
        return fit(v, type);
    }

    private static Object fit(BigInteger v, DataType type) {
        int bits = type instanceof ByteType ? 8 : type instanceof ShortType ? 16
            : type instanceof IntegerType ? 32 : 64;
        if (v.bitLength() >= bits) {
            throw new IllegalArgumentException("value " + brief(v.toString()) + " does not fit "
                + type.simpleString());
        }
        long x = v.longValue();
        if (bits == 8) return (byte) x;
        if (bits == 16) return (short) x;
        if (bits == 32) return (int) x;
        return x;
    }

    private static boolean isDigit(char c) {
        return c >= '0' && c <= '9';
    }

    /** Python's bytes.strip() of ASCII whitespace (space, \t \n \r \x0b \x0c). */
    private static String stripAsciiSpace(String s) {
        int a = 0;
        int b = s.length();
        while (a < b && isSpace(s.charAt(a))) a++;
        while (b > a && isSpace(s.charAt(b - 1))) b--;
        return s.substring(a, b);
    }

    private static boolean isSpace(char c) {
        return c == ' ' || (c >= '\t' && c <= '\r');
    }

    private static String brief(String s) {
        return s.length() > 40 ? s.substring(0, 40) + "..." : s;
    }
}
