"""scripts/gpu_check.sh, the one-step GPU check, where there is no GPU: it explains itself and
stops at once with a clear reason instead of running half the checks."""

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "gpu_check.sh")


def _run(*args, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)


def test_help_names_both_verbs(tmp_path):
    out = _run("--help", tmp_path=tmp_path)
    assert out.returncode == 0
    assert "gpu_check.sh fetch" in out.stdout and "gpu_check.sh run" in out.stdout
    assert "model_step" in out.stdout and "set -uo" not in out.stdout


def test_an_unknown_argument_is_refused_by_name(tmp_path):
    out = _run("run", "--gpus", "2", tmp_path=tmp_path)
    assert out.returncode == 2 and "unknown argument '--gpus'" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop where there is no GPU")
def test_run_without_cuda_stops_before_any_check(tmp_path):
    out = _run("run", "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert out.returncode == 1 and "no CUDA device visible to torch" in out.stderr
    assert not (tmp_path / "out" / "pytest.log").exists()
