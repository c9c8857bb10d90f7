package io.sparkfeed;

import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.io.IOException;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class DatasetDirTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    @Test
    public void aTaskAbortedAfterItsJobLeavesNoEmptyTemporaryDirectories() throws IOException {
        File root = tmp.newFolder("ds");
        DatasetDir dir = DatasetDir.of(root.getPath(), new Configuration());
        Path job = new Path(dir.child(DatasetDir.TEMPORARY), "job-1");
        Path late = new Path(job, "task-1");
        dir.fs.create(new Path(late, "part-00001.tar")).close();  // written after the job's abort
        dir.deleteTaskDirectory(late);
        assertFalse(new File(root, DatasetDir.TEMPORARY).exists());
    }

    @Test
    public void aTaskAbortKeepsDirectoriesOtherTasksStillWriteIn() throws IOException {
        File root = tmp.newFolder("ds");
        DatasetDir dir = DatasetDir.of(root.getPath(), new Configuration());
        Path job = new Path(dir.child(DatasetDir.TEMPORARY), "job-1");
        dir.fs.create(new Path(new Path(job, "task-1"), "part-00001.tar")).close();
        dir.fs.create(new Path(new Path(job, "task-2"), "part-00002.tar")).close();
        dir.deleteTaskDirectory(new Path(job, "task-1"));
        assertFalse(new File(root, "_temporary/job-1/task-1").exists());
        assertTrue(new File(root, "_temporary/job-1/task-2/part-00002.tar").exists());
    }
}
