"""Batches for the model: decoded images as normalised tensors, through a torch DataLoader (workers configurable)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from reportgen.images import ImageRecord, crop_box, decode, display_image
from reportgen.modelcard import Preprocess

__all__ = ["Batch", "to_tensor", "iter_batches"]

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass
class Batch:
    """Decoded images of one batch. Failures are images of the batch that could not be decoded.

    Attributes:
        indices: record index per decoded image.
        tensor: (N, 3, H, W) float32, normalised network input (N may be 0).
        displays: per image, the photo (h, w, 3) uint8 scaled to the report's display size.
        boxes: per image, (left, top, right, bottom) of the region the network saw, in display pixels.
        failures: (record index, reason) for each image that failed to decode.
    """

    indices: list[int]
    tensor: torch.Tensor
    displays: list[np.ndarray]
    boxes: list[tuple[int, int, int, int]]
    failures: list[tuple[int, str]]


def to_tensor(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """RGB PIL image → (3, H, W) float32, resized/cropped and normalised per ``pre``."""
    out_h, out_w = pre.size
    resample = _RESAMPLE[pre.interpolation]
    if pre.resize == "squash":
        img = img.resize((out_w, out_h), resample)
    else:
        img = img.resize((out_w, out_h), resample, box=crop_box(img.width, img.height, pre))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())


class _ImageDataset(Dataset):
    def __init__(self, records: Sequence[ImageRecord], pre: Preprocess, display_size: int):
        self.records = records
        self.pre = pre
        self.display_size = display_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        try:
            img = decode(record.path)
        except Exception as exc:  # any decoder failure means: skip this image, keep the run going
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return {"index": record.index, "error": f"cannot decode image: {reason}"}
        display, box = display_image(img, self.pre, self.display_size)
        return {"index": record.index, "tensor": to_tensor(img, self.pre), "display": display, "box": box}


def _collate(items: list[dict]) -> Batch:
    ok = [it for it in items if "error" not in it]
    tensor = torch.stack([it["tensor"] for it in ok]) if ok else torch.empty(0)
    return Batch(
        indices=[it["index"] for it in ok],
        tensor=tensor,
        displays=[it["display"] for it in ok],
        boxes=[it["box"] for it in ok],
        failures=[(it["index"], it["error"]) for it in items if "error" in it],
    )


def iter_batches(
    records: Sequence[ImageRecord], pre: Preprocess, *, batch_size: int, workers: int = 0, display_size: int = 384,
    groups: Sequence[Sequence[int]] | None = None,
) -> Iterator[Batch]:
    """Decoded batches in record order; ``workers`` > 0 decodes in that many processes.

    ``groups`` (positions in ``records``) fixes which records form each batch instead of consecutive runs of
    ``batch_size``: the runner keeps an image with the same batch-mates whatever else is cached, because the
    batch size changes the float rounding of the convolutions (by a few parts in a million).
    """
    dataset = _ImageDataset(records, pre, display_size)
    if groups is not None:
        loader = DataLoader(dataset, batch_sampler=[list(g) for g in groups], num_workers=workers,
                            collate_fn=_collate, persistent_workers=False)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=_collate, persistent_workers=False)
    yield from loader
