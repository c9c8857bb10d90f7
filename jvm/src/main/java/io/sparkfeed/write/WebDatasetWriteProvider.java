package io.sparkfeed.write;

import java.util.Map;

import io.sparkfeed.WebDatasetOptions;
import io.sparkfeed.WebDatasetSource;
import io.sparkfeed.WebDatasetTable;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableProvider;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * Internal: the DataSource V2 write entry that {@link WebDatasetSource#createRelation} calls by
 * class name with mode append or overwrite, after it has applied the user's save mode. Users
 * write with {@code format("webdataset")}; this class is not registered under a short name.
 */
public final class WebDatasetWriteProvider implements TableProvider {
    @Override
    public boolean supportsExternalMetadata() {
        return true;
    }

    @Override
    public StructType inferSchema(CaseInsensitiveStringMap options) {
        throw new UnsupportedOperationException(
            "read webdataset datasets with spark.read.format(\"webdataset\")");
    }

    @Override
    public Table getTable(StructType schema, Transform[] partitioning,
                          Map<String, String> properties) {
        String path = WebDatasetOptions.parse(properties).path;
        return new WebDatasetTable(path, schema, WebDatasetSource.hadoopConf(), true);
    }
}
