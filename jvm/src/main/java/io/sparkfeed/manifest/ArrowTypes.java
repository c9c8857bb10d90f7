package io.sparkfeed.manifest;

import java.util.Locale;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.BinaryType;
import org.apache.spark.sql.types.BooleanType;
import org.apache.spark.sql.types.ByteType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.DateType;
import org.apache.spark.sql.types.DecimalType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.IntegerType;
import org.apache.spark.sql.types.LongType;
import org.apache.spark.sql.types.ShortType;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.TimestampNTZType;
import org.apache.spark.sql.types.TimestampType;

/**
 * Spark types to and from the manifest's type strings, which are Arrow's ({@code str(pa_type)}
 * in Python): {@code int32}, {@code float}, {@code list<item: float>}, {@code date32[day]},
 * {@code timestamp[us, tz=UTC]}, ... Only the types the webdataset writer supports have a name.
 */
public final class ArrowTypes {
    private static final Pattern LIST = Pattern.compile("list<item: (.+)>");
    private static final Pattern DECIMAL = Pattern.compile("decimal128\\((\\d+), (\\d+)\\)");

    private ArrowTypes() {}

    /** The Arrow type string of a Spark type, or null when the type has no supported name. */
    public static String arrowName(DataType type) {
        if (type instanceof ByteType) return "int8";
        if (type instanceof ShortType) return "int16";
        if (type instanceof IntegerType) return "int32";
        if (type instanceof LongType) return "int64";
        if (type instanceof FloatType) return "float";
        if (type instanceof DoubleType) return "double";
        if (type instanceof BooleanType) return "bool";
        if (type instanceof StringType) return "string";
        if (type instanceof BinaryType) return "binary";
        if (type instanceof DateType) return "date32[day]";
        if (type instanceof TimestampType) return "timestamp[us, tz=UTC]";
        if (type instanceof TimestampNTZType) return "timestamp[us]";
        if (type instanceof DecimalType) {
            DecimalType d = (DecimalType) type;
            return String.format(Locale.ROOT, "decimal128(%d, %d)", d.precision(), d.scale());
        }
        if (type instanceof ArrayType) {
            DataType element = ((ArrayType) type).elementType();
            return isNumeric(element) || element instanceof BooleanType
                ? "list<item: " + arrowName(element) + ">" : null;
        }
        return null;
    }

    /** The Spark type of an Arrow type string written by {@link #arrowName}. */
    public static DataType sparkType(String arrow) {
        switch (arrow) {
            case "int8": return DataTypes.ByteType;
            case "int16": return DataTypes.ShortType;
            case "int32": return DataTypes.IntegerType;
            case "int64": return DataTypes.LongType;
            case "float": return DataTypes.FloatType;
            case "double": return DataTypes.DoubleType;
            case "bool": return DataTypes.BooleanType;
            case "string": case "large_string": return DataTypes.StringType;
            case "binary": case "large_binary": return DataTypes.BinaryType;
            case "date32[day]": return DataTypes.DateType;
            case "timestamp[us, tz=UTC]": return DataTypes.TimestampType;
            case "timestamp[us]": return DataTypes.TimestampNTZType;
            default: break;
        }
        Matcher list = LIST.matcher(arrow);
        if (list.matches()) {
            return DataTypes.createArrayType(sparkType(list.group(1)), true);
        }
        Matcher decimal = DECIMAL.matcher(arrow);
        if (decimal.matches()) {
            return DataTypes.createDecimalType(
                Integer.parseInt(decimal.group(1)), Integer.parseInt(decimal.group(2)));
        }
        throw new IllegalArgumentException("unknown manifest column type \"" + arrow + "\"");
    }

    public static boolean isIntegral(DataType t) {
        return t instanceof ByteType || t instanceof ShortType || t instanceof IntegerType
            || t instanceof LongType;
    }

    public static boolean isNumeric(DataType t) {
        return isIntegral(t) || t instanceof FloatType || t instanceof DoubleType
            || t instanceof DecimalType;
    }

    /** True for the types whose min/max/null_count go into the manifest's shard stats. */
    public static boolean hasStats(DataType t) {
        return isIntegral(t) || t instanceof FloatType || t instanceof DoubleType
            || t instanceof StringType || t instanceof BooleanType || t instanceof DateType
            || t instanceof TimestampType || t instanceof TimestampNTZType;
    }
}
