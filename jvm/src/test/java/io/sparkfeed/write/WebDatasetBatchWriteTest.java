package io.sparkfeed.write;

import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import io.sparkfeed.manifest.ShardInfo;
import org.apache.hadoop.fs.Path;
import org.junit.Test;

/** The job commit's checks of what the tasks reported against the driver's listing. */
public class WebDatasetBatchWriteTest {
    private static ShardInfo shard(String name, long bytes) {
        return new ShardInfo(name, 3, bytes, Collections.singletonList("jpg"),
            Collections.emptyMap(), name + ".idx");
    }

    private static final Path ROOT = new Path("file:/data/wds");

    /** Two shards as their tasks reported them: 3072 and 2048 bytes. */
    private static final List<ShardInfo> TWO = Arrays.asList(shard("part-00000-0000.tar", 3072),
        shard("part-00001-0000.tar", 2048));

    /** The driver's listing: the two tars of these sizes and their indexes. */
    private static Map<String, Long> listing(long first, long second) {
        Map<String, Long> listed = new HashMap<>();
        listed.put("part-00000-0000.tar", first);
        listed.put("part-00000-0000.tar.idx", 40L);
        listed.put("part-00001-0000.tar", second);
        listed.put("part-00001-0000.tar.idx", 40L);
        return listed;
    }

    @Test
    public void shardsOfTheReportedSizePass() {
        WebDatasetBatchWrite.refuseWrongSizes(TWO, listing(3072, 2048), ROOT);
    }

    @Test
    public void aShardCutShortIsRefusedNamingItAndBothSizes() {
        try {
            WebDatasetBatchWrite.refuseWrongSizes(TWO, listing(3072, 1024), ROOT);
            fail("a shard of 1024 bytes passed for one its task wrote with 2048");
        } catch (IllegalStateException e) {
            String m = e.getMessage();
            assertTrue(m, m.contains("part-00001-0000.tar (1024 bytes, its task wrote 2048)"));
            assertTrue(m, m.contains("1 of them") && m.contains("file:/data/wds"));
            assertTrue(m, !m.contains("part-00000-0000.tar ("));
            assertTrue(m, m.contains("no manifest was written"));
        }
    }

    @Test
    public void aLongerFileIsRefusedToo() {
        try {
            WebDatasetBatchWrite.refuseWrongSizes(TWO, listing(4096, 2048), ROOT);
            fail("a shard of 4096 bytes passed for one its task wrote with 3072");
        } catch (IllegalStateException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("4096 bytes, its task wrote 3072"));
        }
    }
}
