package io.sparkfeed.read;

import java.io.Serializable;

import org.apache.spark.sql.types.DataType;

/** One output column of a webdataset read: its name, Spark type and the member holding it. */
public final class ReadColumn implements Serializable {
    private static final long serialVersionUID = 1L;
    public static final String KEY_MEMBER = "__key__";
    public static final String JSON_MEMBER = "json";

    public final String name;
    public final DataType type;
    /** "__key__" for the sample key, "json" for a field of the json member, else the extension. */
    public final String member;

    public ReadColumn(String name, DataType type, String member) {
        this.name = name;
        this.type = type;
        this.member = member;
    }
}
