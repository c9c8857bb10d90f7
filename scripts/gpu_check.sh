#!/usr/bin/env bash
# Every CUDA path of sparkfeed in one step, on a GPU machine that may have no network.
#
#   bash scripts/gpu_check.sh fetch [--python 3.12] [--cuda 13] [--dir gpu-wheels]
#       On any machine with a package index: download NVIDIA DALI and the wheels it needs, for
#       the GPU machine's Python and CUDA major version, into --dir (copy it beside the checkout).
#   bash scripts/gpu_check.sh run [--wheels gpu-wheels | --site DIR] [--out gpu-check] [--workers N] [--quick]
#       On the GPU machine (torch with CUDA, pyarrow, fsspec, tqdm, numpy, pillow, pytest and
#       torchvision installed; no Spark, no Java needed): install DALI from --wheels into a venv that
#       sees the system's packages (or put an unpacked --site on PYTHONPATH), then
#         1. the GPU tests and the loader/decode/prefetch unit tests (pytest, Spark-free ones);
#         2. `sparkfeed bench --scenarios decode,train,bytes,feed`, 128 px images, every loader
#            with the same --workers (DALI "mixed" decoding for sparkfeed and DALI's own reader);
#         3. the decode scenario at 224 px from 500x375 JPEGs, and the loader's decode one and two
#            batches ahead on those images (`python -m sparkfeed.bench.feed --ahead`);
#         4. ResNet-50 (bf16 autocast, batch 256) fed by sparkfeed: the share of step time spent
#            waiting for data (`python -m sparkfeed.bench.model_step`), without and with
#            `--persistent-workers` (each next epoch read, decoded and copied ahead).
#       Logs and results.{json,md} go to --out; a summary is printed last. The bench data are
#       written with pyarrow and indexed (no Spark there) under --out/cache.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"; shift || true
pyver=3.12 cuda="" dir=gpu-wheels wheels="" site="" out=gpu-check quick=0
workers="$(nproc)"
while [ $# -gt 0 ]; do
  case "$1" in
    --python) pyver="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --site) site="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

fetch() {
  cuda="${cuda:-13}"
  # DALI and everything it requires (nvImageCodec with its nvJPEG, nvJPEG2000 and nvTIFF extras,
  # nvCOMP, ...), resolved by pip for the GPU machine's Python and platform; numpy, packaging and
  # six come too, and are left alone there where the installed ones already satisfy DALI.
  local plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
  done
  python3 -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$dir" "nvidia-dali-cuda${cuda}0" || return
  echo "wheels for Python $pyver, CUDA $cuda in $dir/ ($(du -sh "$dir" | cut -f1)); copy them beside the checkout"
}

step() {  # step NAME COMMAND...: run, log to $out/NAME.log, remember the status
  local name="$1"; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/summary.txt"
  tail -n 25 "$out/$name.log"
  return 0
}

run() {
  mkdir -p "$out"; out="$(cd "$out" && pwd)"; : >"$out/summary.txt"
  local py="${PYTHON:-python3}"
  # the DALI build for torch's CUDA major version unless --cuda names one
  cuda="${cuda:-$("$py" -c 'import torch; print((torch.version.cuda or "13").split(".")[0])')}"
  if [ -n "$wheels" ]; then
    "$py" -m venv --system-site-packages "$out/venv" || exit 1
    "$out/venv/bin/python" -m pip install -q --no-index --find-links "$wheels" "nvidia-dali-cuda${cuda}0" \
      || { echo "installing DALI from $wheels failed" >&2; exit 1; }
    py="$out/venv/bin/python"
  elif [ -n "$site" ]; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$here/python:$here/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")' || exit 1
  { nvidia-smi -L; "$py" - <<'EOF'
import platform, torch, pyarrow, nvidia.dali as dali
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "pyarrow", pyarrow.__version__, "dali", dali.__version__, "gpu", torch.cuda.get_device_name(),
      "cpus", __import__("os").cpu_count())
EOF
  } | tee "$out/env.txt"
  local images=20000 big=10000 repeats=3 steps=60
  [ "$quick" = 1 ] && images=4000 big=3000 repeats=1 steps=20
  local cache="$out/cache" bench=("$py" -m sparkfeed.bench --cache "$out/cache" --workers "$workers" --no-progress)
  cd "$here" || exit 1
  step pytest "$py" -m pytest -q -ra -p no:cacheprovider -n 4 -m "not spark and not slow and not distributed" \
    tests/gpu tests/unit/test_loader.py tests/unit/test_loader_decode.py tests/unit/test_decode.py tests/unit/test_bench_nospark.py \
    tests/unit/test_prefetch.py tests/unit/test_prefetch_lookahead.py tests/unit/test_forks.py tests/unit/test_arrays.py \
    tests/unit/test_engine.py
  step bench-128 "${bench[@]}" --scenarios decode,train,bytes,feed --images "$images" --image-size 128 \
    --repeats "$repeats" --out "$out/bench-128"
  step bench-224 "${bench[@]}" --scenarios decode --images "$big" --image-size 224 --image-source 375 \
    --repeats "$repeats" --out "$out/bench-224"
  local data
  data="$("$py" -c "from sparkfeed.bench import datasets as d; print(d.build('$cache', 1000, $big, d.image_shape(375, False), $workers, tabular=False).images)" 2>>"$out/model_step.log")"
  step ahead "$py" -m sparkfeed.bench.feed --ahead "$data" --size 224 --device gpu --workers "$workers" \
    --depths 1,2 --rounds "$repeats"
  step model_step "$py" -m sparkfeed.bench.model_step "$data" --steps "$steps" --workers "$workers"
  step model_step_persistent "$py" -m sparkfeed.bench.model_step "$data" --steps "$steps" --workers "$workers" \
    --persistent-workers
  echo; echo "== summary ($out)"; cat "$out/summary.txt"
  for r in bench-128 bench-224; do [ -f "$out/$r/results.md" ] && { echo "-- $r"; cat "$out/$r/results.md"; }; done
  grep -h ' ahead: ' "$out/ahead.log"
  grep -h '^{' "$out/model_step.log" "$out/model_step_persistent.log" | tail -n 2
}

case "$cmd" in
  fetch) fetch ;;
  run) run ;;
  -h|--help) sed -n '2,20p' "$0" ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
