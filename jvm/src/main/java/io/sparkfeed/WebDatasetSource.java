package io.sparkfeed;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import io.sparkfeed.manifest.ArrowTypes;
import io.sparkfeed.manifest.ManifestReader;
import io.sparkfeed.read.MemberNames;
import io.sparkfeed.read.ReadColumn;
import io.sparkfeed.write.WebDatasetWriteProvider;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RemoteIterator;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SQLContext;
import org.apache.spark.sql.SaveMode;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableProvider;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.execution.datasources.v2.DataSourceV2Relation;
import org.apache.spark.sql.sources.BaseRelation;
import org.apache.spark.sql.sources.CreatableRelationProvider;
import org.apache.spark.sql.sources.DataSourceRegister;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * The "webdataset" data source: {@code df.write.format("webdataset").save(path)} writes tar
 * shards + DALI index files + {@code _sparkfeed.json}; {@code spark.read.format("webdataset")
 * .load(path)} reads them back.
 *
 * <p>Spark (4.x) refuses save modes error (the default) and ignore for a plain TableProvider whose
 * table supports BATCH_WRITE, and hands every mode to the V1 API when the table does not. So the
 * tables of this source are read-only to Spark's planner and this class is also a
 * {@link CreatableRelationProvider}: {@link #createRelation} checks the path for the save mode
 * (error: fail naming it; ignore: do nothing; append: only to a path with no dataset) and then
 * runs the DataSource V2 write through the internal
 * {@link io.sparkfeed.write.WebDatasetWriteProvider} (mode append or overwrite). An overwrite of a
 * path that the DataFrame itself reads is refused here, before anything is deleted: the old
 * dataset is deleted before the tasks run, so they would read nothing, or fail half-way.
 */
public final class WebDatasetSource implements TableProvider, DataSourceRegister,
        CreatableRelationProvider {
    public static final String FALLBACK_VERSION = "0.1.0";

    @Override
    public String shortName() {
        return "webdataset";
    }

    @Override
    public boolean supportsExternalMetadata() {
        return true;
    }

    @Override
    public StructType inferSchema(CaseInsensitiveStringMap options) {
        String path = WebDatasetOptions.parse(options.asCaseSensitiveMap()).path;
        return WebDatasetTable.schemaOf(readPlan(path, hadoopConf()).columns);
    }

    @Override
    public Table getTable(StructType schema, Transform[] partitioning,
                          Map<String, String> properties) {
        if (partitioning.length > 0) {
            throw new IllegalArgumentException("format(\"webdataset\") does not support "
                + "partitionBy; shards are split by samplesPerShard and maxShardBytes");
        }
        String path = WebDatasetOptions.parse(properties).path;
        return new WebDatasetTable(path, schema, hadoopConf(), false);
    }

    @Override
    public BaseRelation createRelation(SQLContext sqlContext, SaveMode mode,
                                       scala.collection.immutable.Map<String, String> parameters,
                                       Dataset<Row> data) {
        Map<String, String> options = new HashMap<>(
            scala.jdk.javaapi.CollectionConverters.asJava(parameters));
        String path = WebDatasetOptions.parse(options).path;
        boolean exists;
        try {
            DatasetDir dir = DatasetDir.of(path, hadoopConf());
            exists = dir.exists();
            if (exists && mode == SaveMode.Overwrite) {
                refuseOverwritingInput(data, dir);
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot check " + path, e);
        }
        if (exists && mode == SaveMode.ErrorIfExists) {
            throw new IllegalArgumentException("path " + path + " already exists (save mode "
                + "error); use mode(\"overwrite\") to replace it, or write to a new path");
        }
        if (!(exists && mode == SaveMode.Ignore)) {
            options.keySet().removeIf(k -> k.equalsIgnoreCase("path"));
            data.write().format(WebDatasetWriteProvider.class.getName())
                .mode(mode == SaveMode.Overwrite ? SaveMode.Overwrite : SaveMode.Append)
                .options(options).save(path);
        }
        StructType schema = data.schema();
        return new BaseRelation() {
            @Override public SQLContext sqlContext() { return sqlContext; }
            @Override public StructType schema() { return schema; }
        };
    }

    /**
     * Fails when {@code data} reads from {@code dir} (a webdataset dataset there, or files under
     * it): overwrite deletes the old dataset before the tasks read, as Spark's file sources would.
     */
    static void refuseOverwritingInput(Dataset<Row> data, DatasetDir dir) throws IOException {
        for (String input : inputsOf(data)) {
            Path p = new Path(input);
            String q = p.getFileSystem(hadoopConf()).makeQualified(p).toString();
            String root = dir.root.toString();
            if (q.equals(root) || q.startsWith(root.endsWith("/") ? root : root + "/")) {
                throw new IllegalArgumentException("cannot overwrite " + root + ": the DataFrame "
                    + "being written reads from it (" + q + "), and overwrite deletes the old "
                    + "dataset before the tasks read it; write to a new path instead");
            }
        }
    }

    /** The paths {@code data} reads: its files (file sources) and its webdataset datasets. */
    private static List<String> inputsOf(Dataset<Row> data) {
        List<String> out = new ArrayList<>(Arrays.asList(data.inputFiles()));
        LogicalPlan plan = data.queryExecution().analyzed();
        for (LogicalPlan leaf : scala.jdk.javaapi.CollectionConverters.asJava(plan.collectLeaves())) {
            if (leaf instanceof DataSourceV2Relation
                    && ((DataSourceV2Relation) leaf).table() instanceof WebDatasetTable) {
                out.add(((WebDatasetTable) ((DataSourceV2Relation) leaf).table()).path());
            }
        }
        return out;
    }

    public static Configuration hadoopConf() {
        return SparkSession.active().sparkContext().hadoopConfiguration();
    }

    /** The sparkfeed version from the jar's manifest (0.1.0 when run from classes). */
    public static String version() {
        String v = WebDatasetSource.class.getPackage().getImplementationVersion();
        return v == null ? FALLBACK_VERSION : v;
    }

    public static String sparkVersion() {
        try {
            return SparkSession.active().version();
        } catch (RuntimeException e) {
            return "unknown";
        }
    }

    /** Columns and absolute shard paths of the dataset at path. */
    static final class ReadPlan {
        final List<ReadColumn> columns;
        final List<String> shards;

        ReadPlan(List<ReadColumn> columns, List<String> shards) {
            this.columns = columns;
            this.shards = shards;
        }
    }

    /**
     * From the manifest when there is one; else every {@code *.tar} under the path, read as
     * {@code key} + one binary column per member extension of the first shard.
     */
    static ReadPlan readPlan(String path, Configuration conf) {
        try {
            DatasetDir dir = DatasetDir.of(path, conf);
            ManifestReader manifest = ManifestReader.readIfPresent(dir.fs, dir.root);
            if (manifest != null) {
                List<ReadColumn> columns = new ArrayList<>();
                for (ManifestReader.Column c : manifest.columns) {
                    String member = c.member == null ? ReadColumn.JSON_MEMBER : c.member;
                    columns.add(new ReadColumn(c.name, ArrowTypes.sparkType(c.type), member));
                }
                List<String> shards = new ArrayList<>();
                for (String shard : manifest.shards) {
                    shards.add(dir.child(shard).toString());
                }
                return new ReadPlan(columns, shards);
            }
            List<String> shards = listTars(dir);
            if (shards.isEmpty()) {
                throw new IllegalArgumentException("no webdataset dataset at " + path
                    + ": no _sparkfeed.json and no .tar files. Datasets are made with "
                    + "df.write.format(\"webdataset\").save(path) or sparkfeed.write(df, path, "
                    + "format=\"webdataset\")");
            }
            List<ReadColumn> columns = new ArrayList<>();
            columns.add(new ReadColumn("key", DataTypes.StringType, ReadColumn.KEY_MEMBER));
            for (String ext : extensions(dir, shards.get(0))) {
                columns.add(new ReadColumn(ext.replace('.', '_'), DataTypes.BinaryType, ext));
            }
            return new ReadPlan(columns, shards);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the webdataset dataset at " + path, e);
        }
    }

    private static List<String> listTars(DatasetDir dir) throws IOException {
        List<String> out = new ArrayList<>();
        if (!dir.fs.exists(dir.root)) {
            return out;
        }
        RemoteIterator<LocatedFileStatus> it = dir.fs.listFiles(dir.root, true);
        while (it.hasNext()) {
            Path p = it.next().getPath();
            String relative = p.toUri().getPath().substring(dir.root.toUri().getPath().length());
            if (p.getName().endsWith(".tar") && !relative.contains("/_") && !relative.contains("/.")) {
                out.add(p.toString());
            }
        }
        Collections.sort(out);
        return out;
    }

    /**
     * The member extensions of a shard's samples (members in no sample, "README", "a.",
     * "__meta__/a.json", left out as the reader leaves them out). A tar that cannot be read to
     * its end gives what was read: the shard's read then fails naming the dataset, the shard
     * and the tar offset.
     */
    private static TreeSet<String> extensions(DatasetDir dir, String shard) throws IOException {
        TreeSet<String> out = new TreeSet<>();
        try (TarArchiveInputStream tar = new TarArchiveInputStream(dir.fs.open(new Path(shard)))) {
            for (TarArchiveEntry e = tar.getNextEntry(); e != null; e = tar.getNextEntry()) {
                if (e.isFile() && MemberNames.isSampleMember(e.getName())) {
                    out.add(MemberNames.extension(e.getName()));
                }
            }
        } catch (IOException | RuntimeException e) {
            return out;  // ShardPartitionReader names what is wrong and where
        }
        return out;
    }

    /** The plan's columns for the table schema (the user's schema on read, if given). */
    static List<ReadColumn> selectColumns(List<ReadColumn> plan, StructType schema) {
        Map<String, ReadColumn> byName = new LinkedHashMap<>();
        for (ReadColumn c : plan) byName.put(c.name, c);
        List<ReadColumn> out = new ArrayList<>();
        for (StructField f : schema.fields()) {
            ReadColumn c = byName.get(f.name());
            out.add(new ReadColumn(f.name(), f.dataType(), c == null ? f.name() : c.member));
        }
        return out;
    }
}
