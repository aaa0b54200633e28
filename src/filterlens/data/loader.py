"""A minimal, fast batch loader over in-memory uint8 arrays (no worker processes).

Batches are float32 NCHW tensors in [0, 1]. Augmentation (random crop with zero padding and
horizontal flip, as for CIFAR training) is done for the whole batch with a few tensor ops.
Shuffling and augmentation draw from one ``torch.Generator``, so a seed fixes every batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .base import ArrayDataset


class BatchLoader:
    def __init__(
        self,
        data: ArrayDataset | tuple[np.ndarray, np.ndarray],
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ):
        if isinstance(data, ArrayDataset):
            images, labels = data.images, data.labels
        else:
            images, labels = data
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[:, :, :, None]
        # uint8 NCHW, kept small in memory; converted to float per batch.
        self.x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.pad = int(crop_padding)
        self.flip = flip
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        if self.pad:
            self.x_padded = torch.nn.functional.pad(self.x, (self.pad,) * 4)
        n, c, h, w = self.x.shape
        self._rows = torch.arange(h)
        self._cols = torch.arange(w)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        return len(self.y)

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pad:
            b = len(idx)
            g = self.generator
            oy = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * self.pad + 1, (b,), generator=g)
            rows = (oy[:, None] + self._rows)[:, None, :, None]
            cols = (ox[:, None] + self._cols)[:, None, None, :]
            c = self.x.shape[1]
            x = self.x_padded[idx[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        else:
            x = self.x[idx]
        if self.flip:
            m = torch.rand(len(idx), generator=self.generator) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(3), x)
        x = x.float().div_(255.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.y[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            yield self._batch(order[start : start + self.batch_size])
