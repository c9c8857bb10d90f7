"""`sparkfeed bench` as a platform engineer meets it: bad options are one line and exit 2 before any
data is built, an interrupted data build does not pass an earlier run's reports off as this one's,
the reports say how to rerun the run and what their figures count. Fast: no Spark, no timed runs
beyond the `feed` scenario's simulated batches."""

import json

import pytest

from sparkfeed import bench
from sparkfeed.bench import Params, datasets, scenarios, timing
from sparkfeed.bench import report
from sparkfeed.bench.cli import main


def _main(tmp_path, *args):
    return main(["--quick", "--cache", str(tmp_path / "c"), "--no-progress", *args])


@pytest.fixture
def no_build(monkeypatch):
    """Any data build fails the test: the checks must come first."""
    def build(*a, **k):
        raise AssertionError("data were built before the options were checked")
    monkeypatch.setattr(datasets, "build", build)


@pytest.mark.parametrize("where, says", [
    ("file", "--out should be a directory for results.json, results.md and results.png, but"),
    ("file/sub", "--out cannot be made: "),
])
def test_an_out_that_is_a_file_is_one_line_naming_out(tmp_path, capsys, no_build, where, says):
    """Before: `sparkfeed bench --out results.json` said "[Errno 17] File exists" (no flag named),
    and `python -m sparkfeed.bench` gave a FileExistsError traceback and exit 1."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        _main(tmp_path, "--scenarios", "feed", "--out", str(tmp_path / where))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and says in err[-1], err
    assert not (tmp_path / "c").exists()


def test_empty_runners_are_refused_not_an_empty_report(tmp_path, capsys, no_build):
    """Before: `--runners ,` (or `--runners ""`) kept no runner, wrote an empty report, exit 0."""
    with pytest.raises(SystemExit) as exit_:
        _main(tmp_path, "--scenarios", "feed", "--runners", ",", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--runners should name at least one runner" in err, err
    assert not (tmp_path / "o" / "results.json").exists()


def test_an_expect_label_that_names_no_runner_is_refused(tmp_path, capsys):
    """Before: `--expect prefetch=5` (the label is "prefetch depth 4") was ignored silently: the
    count check it was meant to test passed, exit 0."""
    with pytest.raises(SystemExit) as exit_:
        _main(tmp_path, "--scenarios", "feed", "--expect", "prefetch=5", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "--expect names no runner that runs: 'prefetch'" in err, err
    assert "'prefetch depth 4'" in err and not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("scenario", list(scenarios.CASES))
def test_a_runners_or_expect_typo_is_refused_before_any_data_are_built(tmp_path, capsys, no_build, scenario):
    """Before: `--runners sparkfeeed` (or an `--expect` label of no runner) was refused only once
    the data were built: 40 s at the default sizes, minutes at larger ones, then exit 2."""
    for flag, value, says in (("--runners", "sparkfeeed", "--runners 'sparkfeeed' match no runner"),
                              ("--expect", "sparkfeeed=5", "--expect names no runner that runs")):
        with pytest.raises(SystemExit) as exit_:
            _main(tmp_path, "--scenarios", scenario, flag, value, "--out", str(tmp_path / "o"))
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_.value.code == 2 and says in err, err
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()


def test_the_labels_known_before_the_data_are_those_the_scenarios_run(tmp_path):
    """`scenarios.labels` (the early check) gives each scenario's runners in the order the
    scenario builds them; plan and scaling, which make data of their own, from their sizes."""
    p = Params(quick=True, scenarios=("feed", "plan"), out=str(tmp_path / "o"), cache=str(tmp_path / "c"))
    p.data = scenarios._NO_DATA
    built = [c.label for s in p.scenarios for c in scenarios.CASES[s](p)]
    assert scenarios.labels(p) == built and built[-1] == "plan 10,000 shards"
    scaled = Params(quick=True, scenarios=("scaling",), scaling_base=1000, out=str(tmp_path / "o"))
    assert scenarios.labels(scaled)[:4] == [f"sparkfeed {f}x ({f * 1000:,} rows)" for f in (1, 2, 4, 8)]
    assert scenarios.labels(scaled)[4:] == [f"plan {n:,} shards" for n in scenarios.PLAN_SHARDS]


def test_ctrl_c_while_the_data_are_built_says_nothing_was_timed(tmp_path, capsys, monkeypatch):
    """Before: Ctrl-C during the (minutes-long) data build printed "the scenarios that finished
    are in OUT/results.md", where an earlier run's reports were left as they were."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.md").write_text("an earlier run's report")

    def build(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(datasets, "build", build)
    assert _main(tmp_path, "--scenarios", "tabular,feed", "--out", str(out)) == 130
    err = capsys.readouterr().err
    assert "interrupted while building the data under" in err and "nothing was timed" in err, err
    assert "the scenarios that finished" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["scenarios"] == {} and results["interrupted"].endswith("not run: tabular, feed")
    md = (out / "results.md").read_text()
    assert "interrupted while building the data" in md and "earlier run" not in md


@pytest.fixture(scope="module")
def feed_run(tmp_path_factory):
    """One quick run of the `feed` scenario's prefetch row (a few seconds), shared."""
    tmp = tmp_path_factory.mktemp("feed")
    assert _main(tmp, "--scenarios", "feed", "--runners", "prefetch", "--batch-size", "8",
                 "--out", str(tmp / "o")) == 0
    return tmp


def test_the_reports_record_the_command_that_reruns_the_run(feed_run):
    """Before: neither results.json nor results.md said how the run was made (the sizes --quick
    chose, the machine's default --workers): nothing to rerun it from."""
    tmp_path = feed_run
    out = tmp_path / "o"
    results = json.loads((out / "results.json").read_text())
    cmd = results["command"]
    assert cmd.startswith("sparkfeed bench --quick --scenarios feed --runners prefetch ")
    assert "--batch-size 8 " in cmd and f"--out {out} " in cmd and f"--cache {tmp_path / 'c'}" in cmd
    assert f"rerun with: `{cmd}`" in (out / "results.md").read_text()
    # the recorded command parses back to the same parameters
    import shlex

    from sparkfeed.bench.cli import _params, configure
    import argparse

    args = configure(argparse.ArgumentParser()).parse_args(shlex.split(cmd)[2:])
    again = _params(args)
    p = results["params"]
    for k in ("quick", "samples", "images", "image_size", "image_source", "batch_size", "workers",
              "repeats", "min_seconds"):
        assert getattr(again, k) == p[k], k
    assert list(again.scenarios) == p["scenarios"] and list(again.runners) == p["runners"]


def test_feed_counts_batches_and_the_table_says_so(feed_run):
    """Before: the feed table's columns said "samples" and "samples/s" for batches (the plot's axis
    already said batches/s)."""
    md = (feed_run / "o" / "results.md").read_text()
    feed = md.split("## feed", 1)[1]
    assert "| runner | batches | seconds | batches/s |" in feed and "CPU µs/batch" in feed


def test_a_baseline_left_out_by_runners_is_said(feed_run):
    """Before: `--runners prefetch` left every `vs baseline` cell "–" with no word why."""
    md = (feed_run / "o" / "results.md").read_text()
    assert "the baseline row, `no prefetch (depth 0)`, was not run (`--runners` left it out)" in md


def test_a_dali_missing_beside_an_nvidia_namespace_is_skipped_not_failed(monkeypatch):
    """CUDA torch wheels install an `nvidia` package (cuBLAS, cuDNN) without DALI: the check of
    the top package alone found it, and the DALI rows were FAILED (ModuleNotFoundError, exit 1)
    on a GPU machine without DALI instead of skipped with the install command."""
    monkeypatch.setitem(timing.runners.REQUIRES, "sparkfeed-dali", ("json.no_such_module", "pip install x"))
    assert timing._missing("sparkfeed-dali") == "skipped: not installed (pip install x)"
    monkeypatch.setitem(timing.runners.REQUIRES, "sparkfeed-dali", ("no_such_top.sub", "pip install x"))
    assert timing._missing("sparkfeed-dali") == "skipped: not installed (pip install x)"
    monkeypatch.setitem(timing.runners.REQUIRES, "sparkfeed-dali", ("json.decoder", "pip install x"))
    assert timing._missing("sparkfeed-dali") == ""


def test_a_peer_venv_without_its_ok_mark_is_said_incomplete(tmp_path, monkeypatch):
    """A venv whose install failed half way said "no venv at <dir>", where the user sees one."""
    monkeypatch.setenv("SPARKFEED_BENCH_PEERS", str(tmp_path))
    (tmp_path / "petastorm" / "bin").mkdir(parents=True)
    (tmp_path / "petastorm" / "bin" / "python").write_text("")
    note = timing._missing("petastorm")
    assert "is incomplete" in note and "install --only petastorm" in note, note
    assert "no venv at" in timing._missing("mosaic-streaming")


def test_a_plot_with_nothing_timed_says_so(tmp_path, monkeypatch):
    """Every row skipped (peers not installed): the plot was a blank image under a title."""
    from matplotlib.figure import Figure

    texts, real = [], Figure.savefig

    def savefig(fig, *a, **k):
        texts.extend(t.get_text() for t in fig.texts)
        return real(fig, *a, **k)
    monkeypatch.setattr(Figure, "savefig", savefig)
    results = {"hardware": {"cores": 2, "gpu": "none"}, "scenarios": {"tabular": [
        {"runner": "petastorm", "samples_per_s": None}]}}
    report.write_png(results, str(tmp_path))
    assert (tmp_path / "results.png").exists()
    assert any(t.startswith("nothing timed") for t in texts), texts


def test_command_spells_out_the_defaults_of_this_machine(tmp_path):
    p = Params(quick=True, scenarios=("scaling",), out=str(tmp_path / "o"), cache=str(tmp_path / "c"),
               workers=1, expect={"sparkfeed 1x (20,000 rows)": 5})
    cmd = bench.command(p)
    assert "--scaling-base 20000" in cmd and "--workers 1" in cmd
    assert "--expect 'sparkfeed 1x (20,000 rows)=5'" in cmd


def test_a_cached_webdataset_failure_is_retried_once_the_jar_is_newer(tmp_path, monkeypatch):
    """Before: a failed WebDataset write (no jar yet) was cached with its `_done` mark, and the
    webdataset rows stayed "skipped" after `make jar` until the cache was deleted by hand."""
    import os

    from sparkfeed import session

    built = {}
    monkeypatch.setattr(datasets, "spark_usable", lambda: True)
    monkeypatch.setattr(datasets, "_spark", lambda: type("Spark", (), {"stop": lambda self: None})())
    monkeypatch.setattr(datasets, "_write_webdataset", lambda spark, img, wds, shard: built.setdefault("wds", ""))
    jar = tmp_path / "sparkfeed.jar"
    jar.write_text("jar")
    monkeypatch.setattr(session, "jar_path", lambda: str(jar))

    def cached(note: str, age: float) -> str:
        cache = tmp_path / f"c{len(os.listdir(tmp_path))}"
        d = datasets.build(str(cache), 10, 10, (8, 8), 1, tabular=False, image=False)
        for path in (d.images, d.image_folder, d.webdataset or d.images + "-wds"):
            os.makedirs(path)
            open(os.path.join(path, datasets.DONE), "w").close()
        note_file = os.path.join(d.images + "-wds", "_note")
        with open(note_file, "w") as f:
            f.write(note)
        os.utime(note_file, (os.path.getmtime(jar) + age,) * 2)
        return str(cache)

    failed_before_the_jar = cached("not available: sparkfeed.write(format='webdataset') failed: no jar", -60)
    data = datasets.build(failed_before_the_jar, 10, 10, (8, 8), 1, tabular=False, image=True)
    assert built == {"wds": ""} and data.webdataset is not None, data.webdataset_note
    built.clear()
    failed_after_the_jar = cached("not available: failed for another reason", +60)
    data = datasets.build(failed_after_the_jar, 10, 10, (8, 8), 1, tabular=False, image=True)
    assert built == {} and data.webdataset is None and "another reason" in data.webdataset_note
