"""The PIL backend: PIL decode + torch ops, with the DALI pipeline's geometry, EXIF turn and verdicts."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from .decoded import _same_shape
from .decodejob import _Draws, _Job
from .encoded import _Encoded
from .headers import resized_sizes
from .imagespec import ImageDecode
from .orientation import _marker_orientation
from .pilopen import Damaged, pixel_limit, png_for_pil

def _finish(spec: ImageDecode, hwc: torch.Tensor) -> torch.Tensor:
    """Normalise, cast and lay out a (N, H, W, 3) uint8 batch (the PIL path's last step)."""
    out = hwc
    if spec.has_norm:
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        std = torch.tensor(spec.std, dtype=torch.float32)
        out = (out.float() - mean) / std
    out = out.to(spec.out_dtype)
    return out.permute(0, 3, 1, 2).contiguous() if spec.layout == "NCHW" else out



def _rgb(im: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. 16-bit grayscale (PIL's "I;16*" and "I" modes) is scaled to 8 bits
    as DALI does; Pillow's own conversion would clip every value above 255 to white. Floating
    grayscale ("F", a float TIFF) is read as 0..1, as DALI reads it; Pillow would make it black."""
    if im.mode.startswith("I;16") or im.mode == "I":
        wide = np.asarray(im, dtype=np.uint32).clip(0, 65535)
        im = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    elif im.mode == "F":
        im = Image.fromarray(np.rint(np.asarray(im, dtype=np.float32).clip(0, 1) * 255).astype(np.uint8))
    return im.convert("RGB")


# What each EXIF orientation asks for, as `ImageOps.exif_transpose` does it
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def _upright(im: Image.Image, arr: np.ndarray) -> Image.Image:
    """The image turned by its EXIF orientation tag (2-8: mirrored and/or rotated), as DALI's
    decoders do (and torchvision's `decode_jpeg(apply_exif_orientation=True)`); a phone photo
    stored sideways comes out the way it is shown. A JPEG's or PNG's tag is read from its
    markers as DALI reads it (PIL also takes a malformed tag that DALI ignores: a LONG, a
    directory running past its block); other formats' from PIL."""
    orientation = _marker_orientation(memoryview(arr))
    if orientation is None:
        orientation = im.getexif().get(0x0112, 1)
    turn = _TURNS.get(orientation)
    return im if turn is None else im.transpose(turn)


def _resample(im: Image.Image, size: tuple[int, int], box: tuple) -> Image.Image:
    """The region `box` (pixel edges, fractional) of `im` resized to `size` as DALI's antialiased
    linear resize does it: Pillow's bilinear (the same triangle filter, widened by the downscale)
    over the image padded with copies of its edge pixels, since DALI clamps its filter's taps to
    the edge where Pillow narrows the filter (up to 38 levels apart on noise; within 1 so)."""
    pad = math.ceil(max((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1], 1.0)) + 1
    return _edge_padded(im, pad).resize(size, Image.BILINEAR, box=tuple(v + pad for v in box))


def _edge_padded(im: Image.Image, pad: int) -> Image.Image:
    """`im` with `pad` copies of its edge pixels around it (Pillow's pastes: a third of the time
    `np.pad(mode="edge")` took)."""
    (w, h), p = im.size, pad
    out = Image.new(im.mode, (w + 2 * p, h + 2 * p))
    out.paste(im, (p, p))
    out.paste(im.crop((0, 0, 1, h)).resize((p, h), Image.NEAREST), (0, p))
    out.paste(im.crop((w - 1, 0, w, h)).resize((p, h), Image.NEAREST), (w + p, p))
    out.paste(out.crop((0, p, w + 2 * p, p + 1)).resize((w + 2 * p, p), Image.NEAREST), (0, 0))
    out.paste(out.crop((0, h + p - 1, w + 2 * p, h + p)).resize((w + 2 * p, p), Image.NEAREST), (0, h + p))
    return out


class _PilBackend:
    """PIL decode + torch ops, with the same geometry as the DALI pipeline."""

    def __init__(self, spec: ImageDecode, device: str):
        self.spec, self.device = spec, device

    def _geometry(self, im: Image.Image, kind: str, window) -> Image.Image:
        """"resize": shorter side to `resize_to`; "slice": the window resized to size x size."""
        s = self.spec.size
        if kind == "slice":
            x0, y0, cw, ch = (int(v) for v in window)
            return _resample(im.crop((x0, y0, x0 + cw, y0 + ch)), (s, s), (0, 0, cw, ch))
        if kind == "resize":
            (w, h), t = im.size, self.spec.resize_to
            (rw,), (rh,) = resized_sizes([w], [h], t)
            step = min(w, h) / t  # DALI keeps this scale on both axes (`subpixel_scale`), centred
            x0, y0 = (w - int(rw) * step) / 2, (h - int(rh) * step) / 2
            return _resample(im, (int(rw), int(rh)), (x0, y0, w - x0, h - y0))
        return im

    def _opened(self, arr: np.ndarray) -> Image.Image:
        """The image decoded as DALI would judge it: a damaged PNG refused (`pilopen.png_for_pil`),
        every pixel check PIL makes under `max_pixels` (`pilopen.pixel_limit`)."""
        im = Image.open(io.BytesIO(png_for_pil(arr)))
        im.load()
        return im

    def _one(self, arr: np.ndarray, draws: _Draws, i: int, kind: str) -> torch.Tensor:
        with pixel_limit(self.spec.max_pixels), self._opened(arr) as im:
            im = self._geometry(_rgb(_upright(im, arr)), kind, None if draws.window is None else draws.window[i])
        t = torch.from_numpy(np.array(im))
        s = self.spec.size
        if s is not None and kind != "slice":
            h, w = t.shape[:2]
            # in double precision, as DALI places its crop: float32 products rounded 11.4999998 up to
            # 11.5, a pixel right of DALI's crop (an image turned by EXIF, whose room is not the drawn one)
            y0, x0 = int(float(draws.pos_y[i]) * (h - s) + 0.5), int(float(draws.pos_x[i]) * (w - s) + 0.5)
            t = t[y0:y0 + s, x0:x0 + s]
        return t.flip(1) if draws.flip[i] else t

    def run(self, enc: _Encoded, rows, draws: _Draws, kind: str, sizes=None):
        """Decode `rows`; returns ([tensor], ok_rows, failures). An identity resize is free in
        Pillow already, so "crop" and "resize" give the same pixels."""
        ok, imgs, failures = [], [], []
        for i, (r, arr) in enumerate(zip(rows, enc.views(rows))):
            try:
                imgs.append(self._one(arr, draws, i, kind))
                ok.append(int(r))
            except Image.UnidentifiedImageError:  # its message names a BytesIO's address
                failures.append((int(r), "PIL could not decode the image (not a recognised image: "
                                         "its header reads, its data does not)"))
            except Damaged as e:
                failures.append((int(r), f"PIL could not decode the image ({e})"))
            except Image.DecompressionBombError as e:  # max_pixels, of a size found while decoding
                failures.append((int(r), f"{e}; refused while decoding"))
            except Exception as e:  # noqa: BLE001 - a bad image is reported, not raised
                failures.append((int(r), f"PIL could not decode the image ({type(e).__name__}: {e})"))
        if not imgs:
            return [], ok, failures
        _same_shape(t.shape for t in imgs)
        return [_finish(self.spec, torch.stack(imgs)).to(self.device)], ok, failures

    def submit(self, job: "_Job") -> None:
        """Nothing starts early: PIL decodes on the caller's thread in `collect`."""

    def collect(self, job: "_Job"):
        return self.run(job.enc, job.rows, job.draws, job.kind, job.sizes) if job.rows.size else ([], [], [])

    def discard(self, job: "_Job") -> None:
        pass

    def close(self) -> None:
        pass

