package io.sparkfeed.read;

import java.util.List;

import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.connector.read.Scan;
import org.apache.spark.sql.connector.read.ScanBuilder;

/** Builds the scan of a webdataset dataset (no pushdown: Spark filters the rows it reads). */
public final class WebDatasetScanBuilder implements ScanBuilder {
    private final List<ReadColumn> columns;
    private final List<String> shards;
    private final Configuration conf;
    private final String dataset;

    public WebDatasetScanBuilder(List<ReadColumn> columns, List<String> shards, Configuration conf) {
        this(columns, shards, conf, null);
    }

    /** dataset: the path given to load(path), which read errors name (null: unknown). */
    public WebDatasetScanBuilder(List<ReadColumn> columns, List<String> shards, Configuration conf,
                                 String dataset) {
        this.columns = columns;
        this.shards = shards;
        this.conf = conf;
        this.dataset = dataset;
    }

    @Override
    public Scan build() {
        return new WebDatasetScan(columns, shards, conf, dataset);
    }
}
