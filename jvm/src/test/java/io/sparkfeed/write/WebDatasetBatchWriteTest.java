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

    @Test
    public void shardsOfTheReportedSizePass() {
        List<ShardInfo> shards = Arrays.asList(shard("part-00000-0000.tar", 3072),
            shard("part-00001-0000.tar", 2048));
        Map<String, Long> listed = new HashMap<>();
        listed.put("part-00000-0000.tar", 3072L);
        listed.put("part-00000-0000.tar.idx", 40L);
        listed.put("part-00001-0000.tar", 2048L);
        listed.put("part-00001-0000.tar.idx", 40L);
        WebDatasetBatchWrite.refuseWrongSizes(shards, listed, ROOT);
    }

    @Test
    public void aShardCutShortIsRefusedNamingItAndBothSizes() {
        List<ShardInfo> shards = Arrays.asList(shard("part-00000-0000.tar", 3072),
            shard("part-00001-0000.tar", 2048));
        Map<String, Long> listed = new HashMap<>();
        listed.put("part-00000-0000.tar", 3072L);
        listed.put("part-00001-0000.tar", 1024L);
        try {
            WebDatasetBatchWrite.refuseWrongSizes(shards, listed, ROOT);
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
        Map<String, Long> listed = new HashMap<>();
        listed.put("part-00000-0000.tar", 4096L);
        try {
            WebDatasetBatchWrite.refuseWrongSizes(
                Collections.singletonList(shard("part-00000-0000.tar", 3072)), listed, ROOT);
            fail("a shard of 4096 bytes passed for one its task wrote with 3072");
        } catch (IllegalStateException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("4096 bytes, its task wrote 3072"));
        }
    }
}
