package io.sparkfeed.write;

import io.sparkfeed.WebDatasetOptions;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.connector.write.DataWriter;
import org.apache.spark.sql.connector.write.DataWriterFactory;
import org.apache.spark.util.SerializableConfiguration;

/** Ships the write plan to the executors and opens one {@link WebDatasetDataWriter} per task. */
public final class WebDatasetWriterFactory implements DataWriterFactory {
    private static final long serialVersionUID = 1L;

    private final WebDatasetOptions options;
    private final SampleLayout layout;
    private final SerializableConfiguration conf;
    private final String jobId;
    private final long mtimeMillis;
    private final boolean staged;

    /** {@code staged}: tasks commit into the job's staging directory (an overwrite), not the root. */
    WebDatasetWriterFactory(WebDatasetOptions options, SampleLayout layout, Configuration conf,
                            String jobId, long mtimeMillis, boolean staged) {
        this.options = options;
        this.layout = layout;
        this.conf = new SerializableConfiguration(conf);
        this.jobId = jobId;
        this.mtimeMillis = mtimeMillis;
        this.staged = staged;
    }

    @Override
    public DataWriter<InternalRow> createWriter(int partitionId, long taskId) {
        return new WebDatasetDataWriter(options, layout, conf.value(), jobId, partitionId, taskId,
            mtimeMillis, staged);
    }
}
