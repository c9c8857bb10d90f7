package io.sparkfeed.write;

import java.io.Serializable;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Pattern;

import io.sparkfeed.WebDatasetOptions;
import io.sparkfeed.manifest.ArrowTypes;
import org.apache.spark.sql.types.BinaryType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.StringType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * Which tar member holds each column: decided once, on the driver, when the write is planned;
 * unsupported columns fail here, before any task runs.
 *
 * <ul>
 *   <li>the key column ({@code keyColumn}, a string) gives the sample key (member "__key__");
 *       without one, keys are generated from (partition, row index): {@code p00003_000000042}.
 *       A non-string column that only has the default name ({@code key}) is an ordinary column,
 *       so a DataFrame with, say, an integer join key writes without options;</li>
 *   <li>binary columns: raw bytes, extension from the codec (jpeg -&gt; jpg, else the codec name),
 *       {@code bin} without a codec;</li>
 *   <li>the integer column named {@code clsColumn} (else the only integer column): {@code cls},
 *       decimal text;</li>
 *   <li>string columns: {@code txt} (several: {@code <column>.txt});</li>
 *   <li>every other scalar (numbers, booleans, dates, timestamps, decimals, arrays of numbers):
 *       one {@code json} object per sample, keyed by column name.</li>
 * </ul>
 * Two columns that would share an extension both get {@code <column>.<ext>}.
 */
public final class SampleLayout implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final Pattern SAFE_NAME = Pattern.compile("[A-Za-z0-9_\\-]+");
    public static final String JSON_EXT = "json";

    /** How one column is stored. */
    public enum Kind { KEY, BINARY, CLS, TXT, JSON }

    /** One column's role, ordinal and member extension. */
    public static final class Member implements Serializable {
        private static final long serialVersionUID = 1L;
        public final String column;
        public final int ordinal;
        public final DataType type;
        public final Kind kind;
        public final String codec;
        String ext;

        Member(String column, int ordinal, DataType type, Kind kind, String codec, String ext) {
            this.column = column;
            this.ordinal = ordinal;
            this.type = type;
            this.kind = kind;
            this.codec = codec;
            this.ext = ext;
        }

        /** The member extension ("jpg", "image.jpg", "json", or "__key__" for the key). */
        public String ext() {
            return ext;
        }
    }

    private final StructType schema;
    private final List<Member> members;
    private final int keyOrdinal;

    private SampleLayout(StructType schema, List<Member> members, int keyOrdinal) {
        this.schema = schema;
        this.members = Collections.unmodifiableList(members);
        this.keyOrdinal = keyOrdinal;
    }

    public StructType schema() { return schema; }

    /** Every column, in schema order. */
    public List<Member> members() { return members; }

    /** The ordinal of the key column, or -1 when keys are generated. */
    public int keyOrdinal() { return keyOrdinal; }

    public String keyColumn() {
        return keyOrdinal < 0 ? null : schema.fields()[keyOrdinal].name();
    }

    /** {@link #plan(StructType, WebDatasetOptions, boolean)} with names matched exactly. */
    public static SampleLayout plan(StructType schema, WebDatasetOptions options) {
        return plan(schema, options, true);
    }

    /**
     * Plans the members of this schema, or throws naming the column that cannot be written. The
     * columns named by keyColumn, clsColumn and codecs resolve as Spark resolves names under
     * {@code spark.sql.caseSensitive} ({@code caseSensitive}): exactly, else in any case when
     * it is false ({@code LABEL} is {@code label}); the defaults ({@code key}, {@code label})
     * match exactly. What is written keeps the DataFrame's spelling.
     */
    public static SampleLayout plan(StructType schema, WebDatasetOptions options,
                                    boolean caseSensitive) {
        StructField[] fields = schema.fields();
        int keyOrdinal = options.keyColumnGiven
            ? resolve(fields, options.keyColumn, caseSensitive, "keyColumn")
            : indexOf(fields, options.keyColumn);
        if (keyOrdinal < 0 && options.keyColumnGiven) {
            throw new IllegalArgumentException("keyColumn names column \"" + options.keyColumn
                + "\", which is not in the DataFrame (columns: " + names(fields) + ")");
        }
        if (keyOrdinal >= 0 && !(fields[keyOrdinal].dataType() instanceof StringType)
                && !options.keyColumnGiven) {
            keyOrdinal = -1;   // a column merely named like the default: data, keys generated
        }
        if (keyOrdinal >= 0 && !(fields[keyOrdinal].dataType() instanceof StringType)) {
            throw new IllegalArgumentException("key column \"" + options.keyColumn + "\" has type "
                + fields[keyOrdinal].dataType().simpleString() + "; sample keys must be strings "
                + "(cast it, or set option keyColumn)");
        }
        Map<String, String> codecs = new HashMap<>();
        for (Map.Entry<String, String> codec : options.codecs.entrySet()) {
            String column = codec.getKey();
            int i = resolve(fields, column, caseSensitive, "codecs");
            if (i < 0) {
                throw new IllegalArgumentException("codecs names column \"" + column
                    + "\", which is not in the DataFrame (columns: " + names(fields) + ")");
            }
            if (!(fields[i].dataType() instanceof BinaryType)) {
                throw new IllegalArgumentException("codecs names column \"" + column + "\" of type "
                    + fields[i].dataType().simpleString() + "; codecs apply to binary columns only");
            }
            String other = codecs.put(fields[i].name(), codec.getValue());
            if (other != null) {
                throw new IllegalArgumentException("codecs names column \"" + fields[i].name()
                    + "\" twice, in two cases (spark.sql.caseSensitive being false); keep one");
            }
        }
        int named = options.clsColumnGiven
            ? resolve(fields, options.clsColumn, caseSensitive, "clsColumn")
            : indexOf(fields, options.clsColumn);
        int clsOrdinal = clsOrdinal(fields, named, keyOrdinal);
        if (options.clsColumnGiven && (clsOrdinal < 0 || clsOrdinal != named)) {
            throw new IllegalArgumentException("clsColumn names column \"" + options.clsColumn
                + "\", which " + (named < 0 ? "is not in the DataFrame (columns: " + names(fields)
                + ")" : named == keyOrdinal ? "is the key column" : "has type "
                + fields[named].dataType().simpleString() + "; the .cls member holds an integer "
                + "column"));
        }
        int strings = 0;
        for (int i = 0; i < fields.length; i++) {
            if (i != keyOrdinal && fields[i].dataType() instanceof StringType) strings++;
        }
        List<Member> members = new ArrayList<>();
        for (int i = 0; i < fields.length; i++) {
            members.add(member(fields[i], i, i == keyOrdinal, i == clsOrdinal, strings > 1,
                codecs.get(fields[i].name())));
        }
        qualifyCollisions(members);
        return new SampleLayout(schema, members, keyOrdinal);
    }

    private static Member member(StructField field, int i, boolean key, boolean cls,
                                 boolean severalStrings, String codec) {
        String name = field.name();
        DataType type = field.dataType();
        if (key) {
            return new Member(name, i, type, Kind.KEY, null, "__key__");
        }
        if (type instanceof BinaryType) {
            String ext = codec == null ? "bin" : codecExtension(name, codec);
            return new Member(name, i, type, Kind.BINARY, codec, ext);
        }
        if (cls) {
            return new Member(name, i, type, Kind.CLS, null, "cls");
        }
        if (type instanceof StringType) {
            return new Member(name, i, type, Kind.TXT, null,
                severalStrings ? safeColumn(name) + ".txt" : "txt");
        }
        if (ArrowTypes.arrowName(type) == null) {
            throw new IllegalArgumentException("column \"" + name + "\" has type "
                + type.simpleString() + ", which format(\"webdataset\") cannot write; supported: "
                + "binary, string, numbers, boolean, date, timestamp, decimal and arrays of "
                + "numbers (convert it, e.g. to_json(\"" + name + "\") or drop it)");
        }
        return new Member(name, i, type, Kind.JSON, null, JSON_EXT);
    }

    /** Several members with one extension: each non-json one becomes {@code <column>.<ext>}. */
    private static void qualifyCollisions(List<Member> members) {
        Map<String, Integer> owners = new HashMap<>();
        boolean json = false;
        for (Member m : members) {
            if (m.kind == Kind.KEY) continue;
            if (m.kind == Kind.JSON) {
                json = true;
            } else {
                owners.merge(m.ext, 1, Integer::sum);
            }
        }
        if (json) {
            owners.merge(JSON_EXT, 1, Integer::sum);
        }
        for (Member m : members) {
            if (m.kind != Kind.KEY && m.kind != Kind.JSON && owners.get(m.ext) > 1) {
                m.ext = safeColumn(m.column) + "." + m.ext;
            }
        }
        Map<String, String> seen = new HashMap<>();
        for (Member m : members) {
            if (m.kind == Kind.KEY || m.kind == Kind.JSON) continue;
            String other = seen.putIfAbsent(m.ext, m.column);
            if (other != null) {
                throw new IllegalArgumentException("columns \"" + other + "\" and \"" + m.column
                    + "\" would both be written as member ." + m.ext + "; rename one of them");
            }
        }
    }

    private static int clsOrdinal(StructField[] fields, int named, int keyOrdinal) {
        if (named >= 0 && named != keyOrdinal && ArrowTypes.isIntegral(fields[named].dataType())) {
            return named;
        }
        int only = -1;
        for (int i = 0; i < fields.length; i++) {
            if (ArrowTypes.isIntegral(fields[i].dataType())) {
                if (only >= 0) return -1;
                only = i;
            }
        }
        return only;
    }

    static String codecExtension(String column, String codec) {
        String c = codec.toLowerCase(Locale.ROOT);
        if (!SAFE_NAME.matcher(c).matches()) {
            throw new IllegalArgumentException("codec \"" + codec + "\" of column \"" + column
                + "\" is not a valid member extension (letters, digits, '_' and '-' only)");
        }
        return c.equals("jpeg") ? "jpg" : c;
    }

    private static String safeColumn(String column) {
        if (!SAFE_NAME.matcher(column).matches()) {
            throw new IllegalArgumentException("column \"" + column + "\" is part of a member "
                + "extension (<column>.<ext>) and may hold only letters, digits, '_' and '-'; "
                + "rename it");
        }
        return column;
    }

    private static int indexOf(StructField[] fields, String name) {
        for (int i = 0; i < fields.length; i++) {
            if (fields[i].name().equals(name)) return i;
        }
        return -1;
    }

    /**
     * The ordinal of the column {@code name} names (-1 when none), as Spark resolves it: the
     * exact name first, then, {@code caseSensitive} being false, the one column equal in any
     * case; several such columns are refused as ambiguous, naming {@code what} named it.
     */
    static int resolve(StructField[] fields, String name, boolean caseSensitive, String what) {
        int exact = indexOf(fields, name);
        if (exact >= 0 || caseSensitive) {
            return exact;
        }
        List<Integer> found = new ArrayList<>();
        for (int i = 0; i < fields.length; i++) {
            if (fields[i].name().equalsIgnoreCase(name)) found.add(i);
        }
        if (found.size() > 1) {
            List<String> alike = new ArrayList<>();
            for (int i : found) alike.add(fields[i].name());
            throw new IllegalArgumentException(what + " names column \"" + name + "\", which is "
                + "ambiguous: the DataFrame has " + String.join(", ", alike) + ", one to Spark "
                + "(spark.sql.caseSensitive being false); rename one of them");
        }
        return found.isEmpty() ? -1 : found.get(0);
    }

    private static String names(StructField[] fields) {
        List<String> out = new ArrayList<>();
        for (StructField f : fields) out.add(f.name());
        return String.join(", ", out);
    }

    /** The manifest's schema entries: name, type, codec (binary with codec), member. */
    public List<Map<String, Object>> manifestSchema() {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Member m : members) {
            Map<String, Object> entry = new LinkedHashMap<>();
            entry.put("name", m.column);
            entry.put("type", ArrowTypes.arrowName(m.type));
            if (m.codec != null) {
                entry.put("codec", m.codec);
            }
            entry.put("member", m.ext);
            out.add(entry);
        }
        return out;
    }
}
