package io.sparkfeed;

import java.io.IOException;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;

import io.sparkfeed.read.ReadColumn;
import io.sparkfeed.read.WebDatasetScan;
import io.sparkfeed.read.WebDatasetScanBuilder;
import io.sparkfeed.write.WebDatasetWriteBuilder;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.connector.catalog.SupportsRead;
import org.apache.spark.sql.connector.catalog.SupportsWrite;
import org.apache.spark.sql.connector.catalog.TableCapability;
import org.apache.spark.sql.connector.read.ScanBuilder;
import org.apache.spark.sql.connector.write.LogicalWriteInfo;
import org.apache.spark.sql.connector.write.WriteBuilder;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * A webdataset dataset at one path. For writes its schema is the DataFrame's; for reads it
 * comes from the manifest (see {@link WebDatasetSource#readPlan}).
 */
public final class WebDatasetTable implements SupportsRead, SupportsWrite {
    private final String path;
    private final StructType schema;
    private final Configuration conf;
    private final boolean batchWrite;

    /**
     * @param batchWrite whether Spark may plan a V2 write on this table directly: true only for
     *     the internal {@link io.sparkfeed.write.WebDatasetWriteProvider}, so that every write
     *     through "webdataset" goes through {@link WebDatasetSource#createRelation} first
     */
    public WebDatasetTable(String path, StructType schema, Configuration conf, boolean batchWrite) {
        this.path = path;
        this.schema = schema;
        this.conf = conf;
        this.batchWrite = batchWrite;
    }

    /** The dataset root as given to {@code load(path)} / {@code save(path)}. */
    public String path() {
        return path;
    }

    /**
     * {@code webdataset:} and the qualified dataset root ({@code file:/abs/ds}, not the relative
     * {@code ds} a Connect server would resolve against its own directory): Spark shows it in the
     * plan's {@code RelationV2 ... webdataset:<root>} line, where sparkfeed.write looks for the
     * datasets a DataFrame reads (they are not among Spark's {@code inputFiles()}), so that an
     * overwrite of one of them as Parquet is refused before anything is deleted.
     */
    @Override
    public String name() {
        try {
            return "webdataset:" + DatasetDir.of(path, conf).root;
        } catch (IOException | RuntimeException e) {
            return "webdataset:" + path;   // a name only; reading reports the path's problem
        }
    }

    @Override
    @SuppressWarnings("deprecation")
    public StructType schema() {
        return schema;
    }

    @Override
    public Set<TableCapability> capabilities() {
        return batchWrite
            ? EnumSet.of(TableCapability.BATCH_READ, TableCapability.BATCH_WRITE,
                         TableCapability.TRUNCATE)
            : EnumSet.of(TableCapability.BATCH_READ);
    }

    @Override
    public ScanBuilder newScanBuilder(CaseInsensitiveStringMap options) {
        WebDatasetSource.ReadPlan plan = WebDatasetSource.readPlan(path, conf);
        List<ReadColumn> columns = WebDatasetSource.selectColumns(plan.columns, schema);
        return new WebDatasetScanBuilder(columns, plan.shards, conf, path);
    }

    @Override
    public WriteBuilder newWriteBuilder(LogicalWriteInfo info) {
        return new WebDatasetWriteBuilder(info, conf);
    }

    static StructType schemaOf(List<ReadColumn> columns) {
        return columns.isEmpty() ? new StructType() : WebDatasetScan.schemaOf(columns);
    }

}
