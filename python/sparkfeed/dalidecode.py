"""The DALI backend: one asynchronous pipeline per geometry kind, fed whole batches, bisecting a
failed run to find its bad rows ("mixed" decoders on the GPU, CPU decoders otherwise)."""

from __future__ import annotations

import collections
import re
import threading

import numpy as np
import torch

from .decoded import _same_shape
from .decodejob import _default_kind, _Draws, _Job
from .encoded import _Encoded
from .imagespec import ImageDecode, _import_dali

def _dali_reason(e: Exception) -> str:
    """The useful line of a DALI pipeline error: the one after 'encountered:'."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return re.sub(r" sample #\d+ *:?", "", lines[i + 1]).strip()
    return lines[0] if lines else type(e).__name__



# Runs of one pipeline DALI's executor may hold at once, by default: with 2, the host stage of
# batch n+1 (parsing, the Huffman decoding that "mixed" does on host threads) overlaps the GPU
# stage of n. A caller that submits k batches ahead of the one it collects asks for k+1
# (`ImageDecoder(runs_in_flight=)`; the loader does).
_QUEUE_DEPTH = 2


def _one_run_per_batch(pipe) -> bool:
    """Make every `schedule_run` start exactly one run, of the batch just fed; False where this
    DALI offers no way to. Its first `schedule_run` would otherwise "prefetch": start
    `prefetch_queue_depth` runs at once, each wanting a batch fed ahead, where `submit` feeds one
    batch per run. The switch is DALI's own flag (`Pipeline._first_iter`, which `schedule_run`
    reads in DALI 2.4), private to DALI, so it is checked, not assumed."""
    if not isinstance(getattr(pipe, "_first_iter", None), bool):
        return False
    pipe._first_iter = False
    return True


# The TensorList hand-over gives "mixed" (GPU) decoders the same pixels as a list (checked on an
# H200 by tests/gpu/test_decode_gpu.py), but measured no faster there: 10,000 500x375 JPEGs to 224
# px, 9,221 and 9,279 images/s after the first batch against 9,175 and 11,903 as a list. So GPU
# batches still go as a list, the path every earlier GPU figure was taken on.
_TENSORLIST_ON_GPU = False


def _dali_batch(views: list[np.ndarray]):
    """The encoded images as one DALI `TensorListCPU` over their own memory (no copy): handed a
    list of arrays, `feed_input` checks and wraps every sample in Python (~5 µs each, a third of
    the per-image cost outside the decoder); a TensorList goes in as it is. A list where this
    DALI cannot make a TensorList without copying."""
    from nvidia.dali import backend

    try:
        return backend.TensorListCPU([backend.TensorCPU(v, "") for v in views], None, False)
    except TypeError:  # a DALI without the `contiguous` argument
        return views


class _DaliBackend:
    """DALI pipelines fed whole batches, one per geometry `kind`: "resize" (shorter side, then
    crop), "crop" (images already at the resize target, or resize=None), "slice" (a window
    decoded by `fn.decoders.image_slice`, resized to size x size: crop="random_resized"). Each is
    built on first use and rebuilt after a failed run (DALI drops it).

    The pipelines run asynchronously (DALI's dynamic executor, `exec_async`/`exec_pipelined`):
    `submit` feeds a batch and schedules its run, `collect` waits for it, so the caller can
    submit batch n+1 before collecting batch n and DALI decodes it meanwhile. DALI returns the
    runs of one pipeline in order (`inflight`); a run settled before its own `collect` waits in
    `done`. A failed run invalidates the pipeline and every run queued behind it: the failed
    batch is redone alone and bisected, the ones behind it are fed again to a fresh pipeline. On the CPU the output is DALI's own buffer
    wrapped by DLPack (no copy): the dynamic executor never reuses a buffer that is still
    referenced, so the tensor stays valid as long as the user holds it.

    "crop" decodes whole images: decoding only the window (`fn.decoders.image_crop`) measured no
    faster on 128 px images, and it accepts a truncated JPEG whenever the window lies in the
    part that is there, so whether a bad image is reported would depend on its crop."""

    def __init__(self, spec: ImageDecode, device: str, max_batch_size: int, num_threads: int, seed: int,
                 runs_in_flight: int = _QUEUE_DEPTH):
        self.spec, self.device = spec, device
        self.dali, self.fn, self.types, self._feed_ndarray = _import_dali()
        self.args = dict(batch_size=max_batch_size, num_threads=num_threads, seed=seed % 2**63,  # (DALI's: int64)
                         device_id=torch.cuda.current_device() if device == "cuda" else None,
                         prefetch_queue_depth=runs_in_flight, exec_async=True, exec_pipelined=True)
        self.pipes: dict[str, object] = {}
        self.inflight: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.done: dict[_Job, object] = {}  # runs settled ahead of their collect
        self.lock = threading.RLock()  # one caller at a time on the pipelines
        self._pipe(_default_kind(spec))  # build now: a DALI problem shows before any reading

    def _pipe(self, kind: str):
        if kind not in self.pipes:
            self.pipes[kind] = self._build(kind)
            # DALI's dynamic executor (its default with exec_async and exec_pipelined) never
            # reuses a buffer still referenced; older DALIs recycle outputs: those are copied out
            self.shares_outputs = bool(getattr(self.pipes[kind], "exec_dynamic", False))
        return self.pipes[kind]

    def _decoded(self, kind: str):
        """The decode (+ geometry) part of the graph; a DALI resize costs more than the decode of
        a small JPEG on the CPU, so it is left out where it is not needed."""
        fn, types, spec = self.fn, self.types, self.spec
        device = "mixed" if self.device == "cuda" else "cpu"
        enc = fn.external_source(name="enc", batch=True, dtype=types.UINT8, ndim=1, no_copy=True)
        if kind == "slice":
            anchor = fn.external_source(name="anchor", batch=True, dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", batch=True, dtype=types.FLOAT, ndim=1)
            img = fn.decoders.image_slice(enc, anchor, shape, device=device, output_type=types.RGB)
            return fn.resize(img, resize_x=spec.size, resize_y=spec.size, antialias=True)
        img = fn.decoders.image(enc, device=device, output_type=types.RGB)
        if kind == "resize":
            img = fn.resize(img, resize_shorter=spec.resize_to, antialias=True)
        return img

    def _positions(self) -> dict:
        """Crop positions: the host's keyed draws for crop="random", the centre otherwise."""
        if self.spec.crop != "random":
            return dict(crop_pos_x=0.5, crop_pos_y=0.5)
        fn, types = self.fn, self.types
        return dict(crop_pos_x=fn.external_source(name="px", batch=True, dtype=types.FLOAT, ndim=0),
                    crop_pos_y=fn.external_source(name="py", batch=True, dtype=types.FLOAT, ndim=0))

    def _build(self, kind: str):
        """decode -> geometry -> crop, mirror, normalise, lay out."""
        pipe = self._graph(kind)
        if self.args["prefetch_queue_depth"] > 1 and not _one_run_per_batch(pipe):
            self.args["prefetch_queue_depth"] = 1  # one run at a time: no prefetch to avoid
            pipe = self._graph(kind)
        return pipe

    def _graph(self, kind: str):
        """One built pipeline of `kind` with the backend's arguments."""
        fn, types, spec = self.fn, self.types, self.spec
        pipe = self.dali.Pipeline(**self.args)
        with pipe:
            img = self._decoded(kind)
            kw = dict(dtype={torch.uint8: types.UINT8, torch.float32: types.FLOAT,
                             torch.float16: types.FLOAT16}[spec.out_dtype],
                      output_layout="CHW" if spec.layout == "NCHW" else "HWC")
            if spec.size is not None and kind != "slice":  # whole images, cropped here
                kw.update(crop=(spec.size, spec.size), **self._positions())
            if spec.mirror:
                kw["mirror"] = fn.external_source(name="flip", batch=True, dtype=types.INT32, ndim=0)
            if spec.has_norm:
                kw["mean"] = list(spec.mean) * (3 // len(spec.mean))
                kw["std"] = list(spec.std) * (3 // len(spec.std))
            pipe.set_outputs(fn.crop_mirror_normalize(img, **kw))
        pipe.build()
        return pipe

    def _inputs(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes) -> dict:
        views = enc.views(rows)
        inputs = {"enc": _dali_batch(views) if self.device != "cuda" or _TENSORLIST_ON_GPU else views}
        # per-row parameters go in as one dense array per batch (DALI splits the outer axis)
        if kind == "slice":  # windows relative to the image: they fit whatever DALI's EXIF turn
            wh = np.tile(sizes[rows].astype(np.float32), 2)
            rel = draws.window.astype(np.float32) / wh
            inputs["anchor"], inputs["shape"] = np.ascontiguousarray(rel[:, :2]), np.ascontiguousarray(rel[:, 2:])
        elif self.spec.crop == "random" and self.spec.size is not None:
            inputs["px"], inputs["py"] = np.ascontiguousarray(draws.pos_x), np.ascontiguousarray(draws.pos_y)
        if self.spec.mirror:
            inputs["flip"] = np.ascontiguousarray(draws.flip)
        return inputs

    def _to_torch(self, out) -> torch.Tensor:
        """DALI output -> torch: on the CPU DALI's buffer itself through DLPack (the tensor keeps
        it alive; the dynamic executor allocates the next run's output elsewhere), on the GPU one
        device-to-device copy on torch's current stream."""
        _same_shape(out.shape())
        t = out.as_tensor()
        if self.device != "cuda" and self.shares_outputs:
            return torch.from_dlpack(t)
        dst = torch.empty(t.shape(), dtype=self.spec.out_dtype, device=self.device)
        self._feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream() if self.device == "cuda" else None)
        return dst

    def _start(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes):
        """Feed a batch to its kind's pipeline and schedule its run; the pipeline."""
        pipe = self._pipe(kind)
        for name, value in self._inputs(enc, rows, draws, kind, sizes).items():
            pipe.feed_input(name, value)
        pipe.schedule_run()
        return pipe

    def _schedule(self, job: _Job) -> None:
        """Feed `job` to its kind's pipeline and start its run (DALI decodes it in the background).
        Behind a run that must be redone it waits unscheduled: the runs queued on a pipeline are
        either all on it or none, so a run redone alone never meets another one's output."""
        queue = self.inflight[job.kind]
        if queue and not queue[0].scheduled:
            queue.append(job)
            return
        try:
            self._start(job.enc, job.rows, job.draws, job.kind, job.sizes)
            job.scheduled = True
        except RuntimeError:  # redone alone (and bisected) when collected
            self._drop(job.kind)
        queue.append(job)

    def _drop(self, kind: str) -> None:
        """Forget a pipeline DALI gave up on; the runs queued on it are redone by `collect`."""
        self.pipes.pop(kind, None)
        for job in self.inflight[kind]:
            job.scheduled = False

    def submit(self, job: _Job) -> None:
        """Start decoding `job` (nothing to do for a batch with no rows left)."""
        if job.rows.size:
            with self.lock:
                self._schedule(job)

    def collect(self, job: _Job):
        """Wait for `job` and return (parts, ok, failures). DALI hands runs back in the order
        they were scheduled, so older runs of the kind are settled first and kept for their own
        `collect` (two iterators of one loader may hold runs on the same pipeline)."""
        if not job.rows.size:
            return [], [], []
        with self.lock:
            while job not in self.done:
                if job not in self.inflight[job.kind]:
                    raise RuntimeError("ImageDecoder.collect: this batch was not submitted, or was "
                                       "already collected or cancelled")
                self._advance(job.kind)
            result = self.done.pop(job)
        if isinstance(result, Exception):
            raise result
        return result

    def _advance(self, kind: str, unwanted: _Job | None = None) -> None:
        """Settle the oldest run of `kind` into `done`: its output, or after a failed run its rows
        redone alone and bisected, then the runs lost with the pipeline fed again in order. The
        `unwanted` run (being cancelled) is only waited for."""
        queue = self.inflight[kind]
        head = queue.popleft()
        out = None
        if head.scheduled:
            try:
                (out,) = self.pipes[kind].outputs()
            except RuntimeError:
                self._drop(kind)
        if head is not unwanted:
            try:
                self.done[head] = ([self._to_torch(out)], head.rows.tolist(), []) if out is not None \
                    else self.run(head.enc, head.rows, head.draws, kind, head.sizes)
            except ValueError as e:  # mixed shapes with size=None: raised by this batch's collect
                self.done[head] = e
        if out is None:
            for later in [queue.popleft() for _ in range(len(queue))]:
                self._schedule(later)

    def discard(self, job: _Job) -> None:
        """Drop a submitted batch that will not be collected; a run already scheduled is waited
        for (a pipeline is never left with an output nobody takes)."""
        with self.lock:
            if self.done.pop(job, None) is not None:
                return
            queue = self.inflight[job.kind]
            if job in queue and not job.scheduled:  # none of the kind is on the pipeline
                queue.remove(job)
            while job in queue:
                self._advance(job.kind, unwanted=job)

    def run(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes=None):
        """Decode `rows` (an index array) now, alone on the pipeline; on a failed batch, bisect to
        find the bad rows. Returns (parts, ok, failures)."""
        try:
            (out,) = self._start(enc, rows, draws, kind, sizes).outputs()
            return [self._to_torch(out)], rows.tolist(), []
        except RuntimeError as e:
            self.pipes.pop(kind, None)
            if len(rows) == 1:
                return [], [], [(int(rows[0]), f"DALI could not decode the image ({_dali_reason(e)})")]
        mid = len(rows) // 2
        left = self.run(enc, rows[:mid], draws.take(slice(0, mid)), kind, sizes)
        right = self.run(enc, rows[mid:], draws.take(slice(mid, None)), kind, sizes)
        return left[0] + right[0], left[1] + right[1], left[2] + right[2]

    def close(self) -> None:
        """Wait for the runs still in flight, then release the pipelines."""
        with self.lock:
            for kind, queue in self.inflight.items():
                while queue:
                    self._advance(kind, unwanted=queue[0])
            self.inflight.clear()
            self.done.clear()
            self.pipes.clear()

