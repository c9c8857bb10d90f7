"""`sparkfeed bench` end to end at a tiny size, and its sample-count check."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.spark

FIELDS = {"runner", "samples", "seconds", "samples_per_s", "mb_per_s", "ttfb_s", "peak_rss_mb",
          "cpu_s_per_sample", "bytes_read", "ratio_vs_baseline", "note"}
# Images stored larger than the output (53x40 JPEGs decoded to 32): every image scenario resizes,
# and all of this file's runs share one image set (a Spark job each set costs).
TINY = ["--samples", "2000", "--images", "120", "--image-size", "32", "--image-source", "40",
        "--batch-size", "64", "--workers", "1", "--repeats", "1", "--min-seconds", "0.2", "--no-progress"]


def _bench(*args, cache, out, timeout=600, peers=None):  # a hang guard: 180 s was hit at load 13
    # peers live in venvs of their own, never installed in CI: point at an empty place by default
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARKFEED_SPARK_LOG_LEVEL="ERROR",
               SPARKFEED_BENCH_PEERS=str(peers or os.path.join(str(out), "no-peers")))
    return subprocess.run([sys.executable, "-m", "sparkfeed.cli", "bench", *TINY, "--cache", str(cache),
                           "--out", str(out), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


SCALING_BASE = 1000


@pytest.fixture(scope="module")
def cache(spark, tmp_path_factory):
    """The bench cache, its datasets written by this process's Spark session: the `sparkfeed
    bench` runs below find them there and start no Spark of their own (a JVM start each)."""
    from sparkfeed.bench import Params, datasets, scenarios

    path = tmp_path_factory.mktemp("bench-cache")
    p = Params(samples=2000, images=120, image_size=32, image_source=40, workers=1,
               scaling_base=SCALING_BASE, cache=str(path))
    datasets.build(p.cache, p.samples, p.images, p.image_shape, p.workers)
    scenarios.scaling_data(p)
    return path


@pytest.mark.slow  # a `sparkfeed bench` run in its own process (its data from the cache)
def test_bench_end_to_end_writes_every_report(cache, tmp_path):
    proc = _bench("--quick", "--scenarios", "tabular,filter,decode,feed", cache=cache, out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"hardware", "params", "scenarios"} <= results.keys()
    assert results["build_s"] == 0, "the cache's datasets were written again"
    assert results["hardware"]["cores"] >= 1 and results["hardware"]["gpu"]
    assert set(results["scenarios"]) == {"tabular", "filter", "decode", "feed"}
    ran = 0
    for name, rows in results["scenarios"].items():
        for row in rows:
            assert FIELDS <= row.keys(), (name, row)
            if row["note"].startswith("skipped"):
                continue
            ran += 1
            assert row["samples"] == row["expected"] and row["samples_per_s"] > 0, (name, row)
            assert row["peak_rss_mb"] > 0
            assert row["ttfb_s"] >= 0 if name != "feed" else row["ttfb_s"] is None
    assert ran >= 10
    tab = {r["runner"]: r for r in results["scenarios"]["tabular"]}
    assert tab["torch-map-style"]["ratio_vs_baseline"] == 1.0
    assert tab["petastorm"]["note"].startswith("skipped") or tab["petastorm"]["samples"] == 2000
    dec = {r["runner"]: r for r in results["scenarios"]["decode"]}
    assert dec["dali-webdataset-cpu"]["samples"] == 120, dec["dali-webdataset-cpu"]  # DALI's own reader
    # stored 53x40, decoded to 32: every loader resizes and still delivers every image
    assert results["params"]["image_source"] == 40 and results["params"]["image_size"] == 32
    assert "torch-pil-files" in dec and any(name.startswith("sparkfeed-dali") for name in dec), dec.keys()
    assert all(r["samples"] == 120 for r in dec.values() if not r["note"].startswith("skipped"))
    one = results["scenarios"]["filter"][1]
    assert one["samples"] == 20 and one["bytes_read"] < results["scenarios"]["filter"][0]["bytes_read"]
    md = (tmp_path / "results.md").read_text()
    assert "## tabular" in md and "pyarrow-scan" in md and "GPU:" in md
    assert "stored at 53x40 px (decoded and centre-cropped to 32 px)" in md
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bytes_and_train_scenarios(cache, tmp_path):
    """`bytes`: the encoded column shuffled and not, every image once; `train`: shuffle + crop +
    flip in every runner, each reporting the distinct labels of its full batches."""
    proc = _bench("--scenarios", "bytes,train", cache=cache, out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scenarios = json.loads((tmp_path / "results.json").read_text())["scenarios"]
    byte_rows = {r["runner"]: r for r in scenarios["bytes"]}
    assert set(byte_rows) == {"sparkfeed-bytes", "sparkfeed-bytes shuffle=True", "pyarrow-scan (ceiling)"}
    assert all(r["samples"] == 120 and r["samples_per_s"] > 0 for r in byte_rows.values()), byte_rows
    train = [r for r in scenarios["train"] if not r["note"].startswith("skipped")]
    assert {r["runner"] for r in train} >= {"torch-pil-files train", "dali-webdataset-cpu train"}
    assert any(r["runner"].startswith("sparkfeed-dali") for r in train)
    for row in train:
        assert row["samples"] == 120, row
        assert 1 <= row["labels_per_batch"] <= 64, row  # one full batch of 64 out of 120 images
    assert "labels_per_batch=" in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # a `sparkfeed bench` run in its own process: plans manifests of up to 10,000 shards
def test_plan_scenario_needs_no_spark(cache, tmp_path):
    """Planning reads only synthetic manifests: no Spark, no data files. (The manifests stay in
    the shared cache for the scaling study's plan rows below.)"""
    proc = _bench("--scenarios", "plan", cache=cache, out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Spark" not in proc.stderr
    plans = json.loads((tmp_path / "results.json").read_text())["scenarios"]["plan"]
    assert [r["samples"] for r in plans] == [100 * 1024, 1_000 * 1024, 10_000 * 1024]
    assert all(r["seconds"] > 0 and r["ttfb_s"] > 0 for r in plans)


@pytest.mark.slow  # a `sparkfeed bench` run in its own process (its data from the cache)
def test_wrong_sample_count_fails_the_run_naming_the_runner(cache, tmp_path):
    proc = _bench("--scenarios", "tabular", "--runners", "torch,pyarrow",
                  "--expect", "torch-map-style=1999", cache=cache, out=tmp_path)
    assert proc.returncode == 1
    assert "runner 'torch-map-style' saw 2000 samples, expected 1999" in proc.stderr
    rows = {r["runner"]: r for r in json.loads((tmp_path / "results.json").read_text())
            ["scenarios"]["tabular"]}
    assert rows["torch-map-style"]["note"].startswith("FAILED")
    assert rows["pyarrow-scan (ceiling)"]["samples"] == 2000  # the others still ran


def test_help_names_every_scenario(capsys):
    """Through the main CLI's hook (`sparkfeed.bench.cli.add_parser`); in process, since
    test_cli.py already runs the installed command itself."""
    from sparkfeed.cli import main

    with pytest.raises(SystemExit, match="^0$"):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for word in ("tabular", "filter", "decode", "bytes", "train", "feed", "--quick", "--cache", "--repeats"):
        assert word in out


@pytest.mark.slow  # a `sparkfeed bench` run in its own process (its data from the cache)
def test_missing_peer_venv_is_a_skip_row_with_the_install_hint(cache, tmp_path):
    proc = _bench("--scenarios", "tabular", "--runners", "petastorm,mosaic,pyarrow",
                  cache=cache, out=tmp_path, peers=tmp_path / "empty-peers")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["runner"]: r for r in json.loads((tmp_path / "results.json").read_text())
            ["scenarios"]["tabular"]}
    for name in ("petastorm", "mosaic-streaming"):
        assert rows[name]["note"].startswith("skipped: run `python -m sparkfeed.bench.peers install`"), rows[name]
        assert str(tmp_path / "empty-peers") in rows[name]["note"]
    assert rows["pyarrow-scan (ceiling)"]["samples"] == 2000


def test_peers_status_names_the_install_command(tmp_path, capsys):
    from sparkfeed.bench.peers import main

    assert main(["status", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "petastorm: not installed" in out and "streaming: not installed" in out


@pytest.mark.slow  # a `sparkfeed bench` run in its own process (its data from the cache)
def test_scaling_runs_a_fresh_process_per_size_and_says_whether_rss_stayed_flat(cache, tmp_path):
    proc = _bench("--scenarios", "scaling", "--scaling-base", str(SCALING_BASE), cache=cache, out=tmp_path,
                  timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["scenarios"]["scaling"]
    sized = [r for r in rows if not r["runner"].startswith("plan ")]
    assert [r["samples"] for r in sized] == [1000, 2000, 4000, 8000]
    assert all(r["peak_rss_mb"] > 0 and r["samples_per_s"] > 0 for r in sized)
    assert [r["runner"] for r in rows if r["runner"].startswith("plan ")] == [
        "plan 100 shards", "plan 1,000 shards", "plan 10,000 shards"]
    summary = results["summaries"]["scaling"]
    assert "stayed flat" in summary or "did NOT stay flat" in summary
    assert summary in (tmp_path / "results.md").read_text()


@pytest.mark.slow  # a `sparkfeed bench` run in its own process (its data from the cache)
def test_remote_scenario_reads_every_sample_over_the_latency_server(cache, tmp_path):
    proc = _bench("--scenarios", "remote", cache=cache, out=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["runner"]: r for r in json.loads((tmp_path / "results.json").read_text())["scenarios"]["remote"]}
    http = [name for name in rows if "HTTP +20 ms" in name]
    assert {"sparkfeed parquet, local", "sparkfeed webdataset, local"} <= rows.keys()
    assert {"sparkfeed parquet, HTTP +20 ms/request", "sparkfeed webdataset, HTTP +20 ms/request",
            "sparkfeed parquet shuffle=True, HTTP +20 ms/request",
            "webdataset, HTTP +20 ms/request", "mosaic-streaming, HTTP +20 ms/request"} <= set(http)
    assert "sparkfeed parquet shuffle=True, local" in rows
    assert rows["sparkfeed parquet, local"]["ratio_vs_baseline"] == 1.0
    # the transfer's own ceiling: every byte of the Parquet files once, nothing else
    alone = rows["bytes alone (the Parquet files), HTTP +20 ms/request"]
    [images] = [p for p in cache.iterdir() if p.name.startswith("images-") and (p / "_sparkfeed.json").exists()
                and json.loads((p / "_sparkfeed.json").read_text())["format"] == "parquet"]
    shards = json.loads((images / "_sparkfeed.json").read_text())["shards"]
    assert alone["bytes_served"] == sum(s["num_bytes"] for s in shards) > 0
    assert alone["requests"] == sum(-(-s["num_bytes"] // (8 << 20)) for s in shards)
    for name, row in rows.items():
        if row["note"].startswith("skipped"):
            assert not name.startswith("sparkfeed"), row  # sparkfeed's own rows always run
            continue
        assert row["samples"] == 120 and row["expected"] == 120, row
        assert row["steady_samples_per_s"] > 0 and row["ttfb_s"] > 0, row
        if name in http:  # served by the latency server: counted on its side
            assert row["requests"] > 0 and row["bytes_served"] > 0, row
        if name.startswith("sparkfeed"):
            assert row["bytes_read"] > 0, row
    assert "steady_samples_per_s=" in (tmp_path / "results.md").read_text()
