package io.sparkfeed.write;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import io.sparkfeed.WebDatasetOptions;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.Test;

public class SampleLayoutTest {
    private static WebDatasetOptions options(String... kv) {
        Map<String, String> m = new HashMap<>();
        m.put("path", "/tmp/x");
        for (int i = 0; i < kv.length; i += 2) m.put(kv[i], kv[i + 1]);
        return WebDatasetOptions.parse(m);
    }

    private static List<String> exts(SampleLayout layout) {
        List<String> out = new ArrayList<>();
        for (SampleLayout.Member m : layout.members()) out.add(m.column + "=" + m.ext());
        return out;
    }

    private static final StructType IMAGES = new StructType()
        .add("key", DataTypes.StringType).add("image", DataTypes.BinaryType)
        .add("label", DataTypes.IntegerType).add("caption", DataTypes.StringType)
        .add("feat", DataTypes.createArrayType(DataTypes.FloatType))
        .add("score", DataTypes.DoubleType).add("epoch", DataTypes.LongType);

    @Test
    public void theUsualImageDataset() {
        SampleLayout layout = SampleLayout.plan(IMAGES, options("codecs", "{\"image\": \"jpeg\"}"));
        assertEquals("[key=__key__, image=jpg, label=cls, caption=txt, feat=json, score=json, "
            + "epoch=json]", exts(layout).toString());
        assertEquals(0, layout.keyOrdinal());
        assertEquals("{name=image, type=binary, codec=jpeg, member=jpg}",
            layout.manifestSchema().get(1).toString());
        assertEquals("{name=feat, type=list<item: float>, member=json}",
            layout.manifestSchema().get(4).toString());
    }

    @Test
    public void collisionsAreQualifiedByColumn() {
        StructType schema = new StructType().add("a", DataTypes.BinaryType)
            .add("b", DataTypes.BinaryType).add("c", DataTypes.BinaryType)
            .add("t1", DataTypes.StringType).add("t2", DataTypes.StringType)
            .add("n", DataTypes.IntegerType);
        SampleLayout layout = SampleLayout.plan(schema,
            options("codecs", "{\"a\": \"png\", \"b\": \"png\"}"));
        assertEquals("[a=a.png, b=b.png, c=bin, t1=t1.txt, t2=t2.txt, n=cls]",
            exts(layout).toString());
        assertEquals(-1, layout.keyOrdinal());
    }

    @Test
    public void clsOnlyForTheNamedOrSingleIntegerColumn() {
        StructType two = new StructType().add("x", DataTypes.IntegerType)
            .add("y", DataTypes.LongType);
        assertEquals("[x=json, y=json]", exts(SampleLayout.plan(two, options())).toString());
        assertEquals("[x=json, y=cls]",
            exts(SampleLayout.plan(two, options("clsColumn", "y"))).toString());
    }

    @Test
    public void unsupportedColumnsFailNamingTheColumn() {
        StructType[] bad = {
            new StructType().add("meta", DataTypes.createMapType(DataTypes.StringType,
                DataTypes.StringType)),
            new StructType().add("meta", new StructType().add("x", DataTypes.IntegerType)),
            new StructType().add("meta", DataTypes.createArrayType(DataTypes.StringType)),
        };
        for (StructType schema : bad) {
            try {
                SampleLayout.plan(schema, options());
                fail("accepted " + schema.simpleString());
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("column \"meta\" has type"));
            }
        }
    }

    @Test
    public void aNonStringColumnWithTheDefaultKeyNameIsData() {
        StructType schema = new StructType().add("key", DataTypes.LongType)
            .add("image", DataTypes.BinaryType).add("label", DataTypes.IntegerType);
        SampleLayout layout = SampleLayout.plan(schema, options());
        assertEquals(-1, layout.keyOrdinal());
        assertEquals("[key=json, image=bin, label=cls]", exts(layout).toString());
        try {
            SampleLayout.plan(schema, options("keyColumn", "key"));
            fail("accepted an explicit non-string keyColumn");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("sample keys must be strings"));
        }
    }

    @Test
    public void badOptionsFailUpFront() {
        String[][] cases = {
            {"samplesPerShard", "0", "samplesPerShard should be a positive integer"},
            {"maxShardBytes", "-5", "maxShardBytes should be a positive integer"},
            {"invalidKeys", "drop", "invalidKeys should be \"error\" or \"sanitize\""},
            {"codecs", "{\"nope\": \"jpeg\"}", "codecs names column \"nope\""},
            {"codecs", "{\"label\": \"jpeg\"}", "codecs apply to binary columns only"},
            {"codecs", "{\"image\": \"j/p\"}", "is not a valid member extension"},
            {"keyColumn", "label", "sample keys must be strings"},
        };
        for (String[] c : cases) {
            try {
                SampleLayout.plan(IMAGES, options(c[0], c[1]));
                fail("accepted " + c[0] + "=" + c[1]);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains(c[2]));
            }
        }
    }

    @Test
    public void aKeyOrClsColumnThatIsGivenMustBeUsableOrTheWriteFails() {
        String[][] cases = {
            {"keyColumn", "id", "keyColumn names column \"id\", which is not in the DataFrame"},
            {"clsColumn", "nope", "clsColumn names column \"nope\", which is not in the DataFrame"},
            {"clsColumn", "caption", "clsColumn names column \"caption\", which has type string"},
            {"clsColumn", "key", "clsColumn names column \"key\", which is the key column"},
        };
        for (String[] c : cases) {
            try {
                SampleLayout.plan(IMAGES, options(c[0], c[1]));
                fail("planned with " + c[0] + "=" + c[1]);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith(c[2]));
            }
        }
        // given and usable: the named integer column is .cls, not the only-integer guess
        assertEquals("[key=__key__, image=bin, label=json, caption=txt, feat=json, score=json, "
            + "epoch=cls]", exts(SampleLayout.plan(IMAGES, options("clsColumn", "epoch"))).toString());
    }

    @Test
    public void namesInAnotherCaseResolveUnlessCaseSensitive() {
        WebDatasetOptions o = options("keyColumn", "KEY", "clsColumn", "Label",
            "codecs", "{\"IMAGE\": \"jpeg\"}");
        SampleLayout layout = SampleLayout.plan(IMAGES, o, false);
        assertEquals("key", layout.keyColumn());
        assertEquals("[key=__key__, image=jpg, label=cls, caption=txt, feat=json, score=json, "
            + "epoch=json]", exts(layout).toString());
        assertEquals("image", layout.manifestSchema().get(1).get("name"));
        try {
            SampleLayout.plan(IMAGES, o, true);
            fail("KEY is not key under caseSensitive=true");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("keyColumn names column \"KEY\""));
        }
    }

    @Test
    public void anAmbiguousNameIsRefusedAndAnExactOneWins() {
        StructType twice = new StructType().add("key", DataTypes.StringType)
            .add("img", DataTypes.BinaryType).add("IMG", DataTypes.BinaryType);
        SampleLayout exact = SampleLayout.plan(twice, options("codecs", "{\"IMG\": \"png\"}"),
            false);
        assertEquals("[key=__key__, img=bin, IMG=png]", exts(exact).toString());
        try {
            SampleLayout.plan(twice, options("codecs", "{\"Img\": \"png\"}"), false);
            fail("Img is img or IMG");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("ambiguous")
                && e.getMessage().contains("img, IMG"));
        }
    }
}
