"""The bench data without Spark (`bench.nospark`, used where no Spark session can start, as on a
GPU machine set up for training): the Spark writer's rows, read back by sparkfeed and by DALI's
own WebDataset reader."""

import pytest
import torch

import sparkfeed
from sparkfeed.bench import datasets, imagerunners, runners
from sparkfeed.bench.timing import measure

ROWS, IMAGES, SHAPE = 700, 150, (40, 30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(datasets, "spark_usable", lambda: False)
    try:
        yield datasets.build(str(tmp_path_factory.mktemp("nospark")), ROWS, IMAGES, SHAPE, 2)
    finally:
        patch.undo()


def _rows(path, columns):
    """Every column of the dataset as a list (tensors as numbers, binary columns as bytes)."""
    out = {c: [] for c in columns}
    for batch in sparkfeed.DataLoader(path, batch_size=64, columns=columns):
        for c in columns:
            v = batch[c]
            if isinstance(v, torch.Tensor):
                out[c] += v.tolist()
            else:
                out[c] += [bytes(x) if c in ("image", "jpg") else x for x in v]
    return out


def test_the_tabular_rows_are_the_spark_writers(data):
    got = _rows(data.tabular, ["id", "label", "caption", "f0"])
    order = sorted(range(ROWS), key=got["id"].__getitem__)
    assert [got["id"][i] for i in order] == list(range(ROWS))
    assert [got["label"][i] for i in order] == [i * datasets.NUM_LABELS // ROWS for i in range(ROWS)]
    assert got["caption"][order[5]] == "a synthetic caption for row 5"
    assert all(0.0 <= x < 1.0 for x in got["f0"])


def test_the_images_are_the_same_jpegs_in_parquet_and_in_tars(data):
    assert data.written_by.startswith("pyarrow") and data.webdataset and data.webdataset_note == ""
    pq = _rows(data.images, ["id", "label", "image"])
    assert sorted(pq["id"]) == list(range(IMAGES))
    for i, label, image in zip(pq["id"], pq["label"], pq["image"]):
        assert label == i * datasets.NUM_LABELS // IMAGES and image == datasets.jpeg(i, *SHAPE)
    tars = _rows(data.webdataset, ["key", "cls", "jpg"])
    by_key = {int(k[1:]): (cls, jpg) for k, cls, jpg in zip(tars["key"], tars["cls"], tars["jpg"])}
    assert sorted(by_key) == list(range(IMAGES))
    assert all(by_key[i] == (label, image) for i, label, image in zip(pq["id"], pq["label"], pq["image"]))


def test_dali_reads_the_tars_with_the_indexes_sparkfeed_index_wrote(data):
    pytest.importorskip("nvidia.dali")  # a GPU machine may have the rest and not DALI
    ctx = runners.Context(data=data, batch_size=64, workers=1, image_size=24, image_source=30)
    m = measure(imagerunners.dali_webdataset, ctx, {})
    assert m["samples"] == IMAGES
    assert m["extra"]["steady_samples_per_s"] > 0 and m["ttfb_s"] > 0


def test_paired_rounds_time_both_readers_over_every_image(data):
    pytest.importorskip("nvidia.dali")  # a GPU machine may have the rest and not DALI
    from sparkfeed.bench import pairs

    ctx = runners.Context(data=data, batch_size=64, workers=1, image_size=24)
    result = pairs.pairs(ctx, rounds=2)
    assert result["images"] == IMAGES
    assert all(len(result[k][side]) == 2 for k in ("rates", "cpu_us") for side in ("sparkfeed", "dali"))
    assert result["ratios"] == [a / b for a, b in zip(result["rates"]["sparkfeed"], result["rates"]["dali"])]
    assert result["median_ratio"] == pytest.approx(sum(result["ratios"]) / 2)
    assert result["rounds_at_or_above_1"] == sum(r >= 1.0 for r in result["ratios"])
    with pytest.raises(SystemExit):
        pairs.main([data.images, "--rounds", "0"])


def test_paired_rounds_of_the_shuffled_and_unshuffled_tabular_read(data, capsys):
    """`pairs --shuffle`: sparkfeed shuffle=True against shuffle=False over the bench's tabular
    rows, each round both, every row each time; the ratios are shuffled over unshuffled."""
    from sparkfeed.bench import pairs

    assert pairs.main([data.tabular, "--shuffle", "--rounds", "3", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("shuffled ") and "\nunshuffled " in out and "median ratio" in out
    ratios = [float(x) for x in out.split("ratio per round: ")[1].split("\n")[0].split()]
    assert len(ratios) == 3 and all(r > 0 for r in ratios)
    with pytest.raises(SystemExit):
        pairs.main([data.tabular + "-missing", "--shuffle"])
