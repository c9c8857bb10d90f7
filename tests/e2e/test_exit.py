"""A script may end with a decoding loader still running (a persistent loader, an iterator kept
in a variable): the process exits 0. DALI's own exit hook asserts that no pipeline is in use and
aborts the process (rc 134) when a prefetch thread is still inside a DALI run."""

import io
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest
from PIL import Image

import dsutil

SCRIPT = textwrap.dedent("""
    import sys
    import sparkfeed
    root, shape = sys.argv[1], sys.argv[2]
    decode = {"image": sparkfeed.ImageDecode(size=24, device="cpu")}
    if shape == "persistent":
        loader = sparkfeed.DataLoader(root, batch_size=32, shuffle=True, num_workers=2, drop_last=True,
                                      persistent_workers=True, decode=decode)
        for epoch in range(2):
            loader.set_epoch(epoch)
            for batch in loader:
                pass
    else:
        it = iter(sparkfeed.DataLoader(root, batch_size=32, shuffle=True, num_workers=2, decode=decode))
        batch = next(it)
    print("done", batch["image"].shape[0], flush=True)
""")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    pytest.importorskip("nvidia.dali", reason="pip install 'sparkfeed[dali]'")
    root = str(tmp_path_factory.mktemp("exit") / "ds")
    table = dsutil.table(600).append_column("image", pa.array([_jpeg(i) for i in range(600)], pa.binary()))
    dsutil.write_parquet(root, table, 100, 50, codecs={"image": "jpeg"})
    return root


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (i % 256, 7 * i % 256, 13 * i % 256)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("shape", ["persistent", "kept_iterator"])
def test_a_script_ending_with_a_decoding_loader_alive_exits_cleanly(images, shape, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), images, shape], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done 32" in done.stdout
    assert "AssertionError" not in done.stderr and "terminate called" not in done.stderr, done.stderr[-3000:]
