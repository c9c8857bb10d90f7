"""`bench.model_step` on CUDA: a few steps of a small torchvision model fed by sparkfeed with GPU
decoding; the figures it reports hold together. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_few_resnet18_steps_report_consistent_figures(tmp_path):
    from sparkfeed.bench import datasets
    from sparkfeed.bench.model_step import measure

    data = datasets.build(str(tmp_path), 1000, 256, (80, 60), 2, tabular=False)
    got = measure(data.images, steps=4, warmup=2, batch=32, size=48, workers=2, model_name="resnet18")
    assert got["steps"] == 4 and got["gpu"] == torch.cuda.get_device_name()
    assert 0.0 <= got["wait_fraction"] <= 1.0 and got["max_wait_s"] >= 0
    assert got["epoch_starts"] == 0 and got["wait_fraction_within_epochs"] == got["wait_fraction"]
    assert got["loader_step_s"] > 0 and got["synthetic_step_s"] > 0
    assert got["loader_images_per_s"] == pytest.approx(32 / got["loader_step_s"], rel=0.01)
