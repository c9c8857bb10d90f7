package io.sparkfeed;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.io.IOException;
import java.net.URI;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.util.Progressable;
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

    /**
     * The local file system, whose first {@code failures} creates fail as a create does when a
     * sibling task's abort removes the empty _temporary while the directories are being made:
     * the directories are gone (when {@code removeDirectories}) and the create throws.
     */
    private static final class RacyFileSystem extends RawLocalFileSystem {
        private final Path temporary;
        private final boolean removeDirectories;
        private int failures;
        int creates;

        RacyFileSystem(Path temporary, int failures, boolean removeDirectories) throws IOException {
            this.temporary = temporary;
            this.failures = failures;
            this.removeDirectories = removeDirectories;
            initialize(URI.create("file:///"), new Configuration());
        }

        @Override
        public FSDataOutputStream create(Path f, boolean overwrite, int bufferSize, short replication,
                                         long blockSize, Progressable progress) throws IOException {
            creates++;
            if (failures > 0) {
                failures--;
                if (removeDirectories) {
                    delete(temporary, true);
                }
                throw new IOException("chmod: cannot access '" + temporary + "': No such file or directory");
            }
            return super.create(f, overwrite, bufferSize, replication, blockSize, progress);
        }
    }

    private static DatasetDir racy(File root, int failures, boolean removeDirectories) throws IOException {
        Path qualified = new Path(root.toURI());
        RacyFileSystem fs = new RacyFileSystem(new Path(qualified, DatasetDir.TEMPORARY), failures,
                                               removeDirectories);
        return DatasetDir.on(fs, qualified);
    }

    @Test
    public void aCreateWhoseDirectoriesASiblingsCleanUpRemovedMakesThemAgain() throws IOException {
        File root = tmp.newFolder("ds");
        DatasetDir dir = racy(root, 1, true);
        Path file = new Path(new Path(new Path(dir.child(DatasetDir.TEMPORARY), "job-1"), "task-2"), "part-00002.tar");
        dir.createInTask(file, 4096).close();
        assertTrue(new File(root, "_temporary/job-1/task-2/part-00002.tar").exists());
        assertEquals(2, ((RacyFileSystem) dir.fs).creates);
    }

    @Test
    public void aCreateThatFailsWithItsDirectoryInPlaceIsNotRetried() throws IOException {
        File root = tmp.newFolder("ds");
        DatasetDir dir = racy(root, 1, false);
        Path task = new Path(new Path(dir.child(DatasetDir.TEMPORARY), "job-1"), "task-2");
        dir.fs.mkdirs(task);
        IOException e = assertThrows(IOException.class, () -> dir.createInTask(new Path(task, "x.tar"), 4096));
        assertTrue(e.getMessage().contains("No such file or directory"));
        assertEquals(1, ((RacyFileSystem) dir.fs).creates);
    }

    @Test
    public void aCreateThatKeepsLosingItsDirectoriesFailsAfterItsTries() throws IOException {
        File root = tmp.newFolder("ds");
        DatasetDir dir = racy(root, DatasetDir.CREATE_ATTEMPTS, true);
        Path file = new Path(new Path(new Path(dir.child(DatasetDir.TEMPORARY), "job-1"), "task-2"), "x.tar");
        assertThrows(IOException.class, () -> dir.createInTask(file, 4096));
        assertEquals(DatasetDir.CREATE_ATTEMPTS, ((RacyFileSystem) dir.fs).creates);
        assertFalse(new File(root, "_temporary").exists());
    }
}
