package io.sparkfeed.write;

import java.io.IOException;
import java.io.UncheckedIOException;

import io.sparkfeed.DatasetDir;
import io.sparkfeed.WebDatasetOptions;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.connector.write.BatchWrite;
import org.apache.spark.sql.connector.write.LogicalWriteInfo;
import org.apache.spark.sql.connector.write.SupportsTruncate;
import org.apache.spark.sql.connector.write.Write;
import org.apache.spark.sql.connector.write.WriteBuilder;
import org.apache.spark.sql.internal.SQLConf;

/**
 * Plans a webdataset write: validates the options and the schema (unsupported columns fail
 * here, on the driver, before any task runs). {@code truncate()} is Spark's mode("overwrite").
 */
public final class WebDatasetWriteBuilder implements WriteBuilder, SupportsTruncate {
    private final LogicalWriteInfo info;
    private final Configuration conf;
    private boolean truncate;

    public WebDatasetWriteBuilder(LogicalWriteInfo info, Configuration conf) {
        this.info = info;
        this.conf = conf;
    }

    @Override
    public WriteBuilder truncate() {
        truncate = true;
        return this;
    }

    static IllegalArgumentException existsError(String path) {
        return new IllegalArgumentException("path " + path + " already exists (it holds a dataset "
            + "or other files); use mode(\"overwrite\") to replace it, or write to a new path. "
            + "Appending to a webdataset dataset is not supported");
    }

    @Override
    public Write build() {
        WebDatasetOptions.refuseUnknownForWrite(info.options().asCaseSensitiveMap());
        WebDatasetOptions options = WebDatasetOptions.parse(info.options().asCaseSensitiveMap());
        SampleLayout layout = SampleLayout.plan(info.schema(), options,
            SQLConf.get().caseSensitiveAnalysis());
        if (!truncate) {
            try {
                if (DatasetDir.of(options.path, conf).exists()) {
                    throw existsError(options.path);
                }
            } catch (IOException e) {
                throw new UncheckedIOException("cannot check " + options.path, e);
            }
        }
        String jobId = info.queryId();
        boolean overwrite = truncate;
        return new Write() {
            @Override
            public String description() {
                return "webdataset write to " + options.path;
            }

            @Override
            public BatchWrite toBatch() {
                return new WebDatasetBatchWrite(options, layout, conf, jobId, overwrite);
            }
        };
    }
}
