"""A small projection head trained on cached embeddings with folder names as labels.

Why a head: ImageNet features spread a collection's classes along directions that ImageNet cared
about; a head trained with a metric-learning loss on the user's own labels pulls each class
together and compresses 1280-d vectors to 128-d (10x less index memory) at the same time.

Loss: normalised-softmax proxies (one learnable unit vector per class, cosine logits times a
scale, cross-entropy), which is as good as pair/triplet losses on small data and needs no mining
(Zhai & Wu, 2019; Musgrave et al., 2020). Training runs on the cached vectors, not on images, so
it takes seconds on a CPU. Inference is plain numpy (BatchNorm folded into the first layer), and
the weights are saved as NPZ, never pickled.

This is supervised: it only helps for the labels it was trained on, and must be evaluated on
images it never saw (``imrs bench`` holds out part of every class).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import IMRSError, StoreError
from ..fsutil import atomic_savez

log = logging.getLogger(__name__)


class ProjectionHead:
    """``x -> norm(W2 relu(W1 x + b1) + b2)`` (or ``norm(W1 x + b1)`` when linear)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]

    @property
    def dim(self) -> int:
        return int(self.layers[-1][0].shape[1])

    @property
    def in_dim(self) -> int:
        return int(self.layers[0][0].shape[0])

    def transform(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), self.dim), np.float32)
        for s in range(0, len(x), chunk):
            h = x[s:s + chunk]
            for i, (w, b) in enumerate(self.layers):
                h = h @ w + b
                if i < len(self.layers) - 1:
                    h = np.maximum(h, 0.0)
            out[s:s + chunk] = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        arrays = {}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        atomic_savez(path, n_layers=np.asarray(len(self.layers)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProjectionHead:
        try:
            with np.load(path, allow_pickle=False) as z:
                n = int(z["n_layers"])
                return cls([(z[f"w{i}"], z[f"b{i}"]) for i in range(n)])
        except (OSError, ValueError, KeyError) as exc:
            raise StoreError(f"{path}: unreadable projection head ({exc})") from exc


def train_head(x: np.ndarray, labels: np.ndarray, dim: int = 128, hidden: int = 512, epochs: int = 40,
               batch_size: int = 256, lr: float = 2e-3, weight_decay: float = 1e-4, scale: float = 16.0,
               dropout: float = 0.1, seed: int = 0) -> ProjectionHead:
    """Train on rows with ``labels >= 0`` (others ignored). Deterministic for a fixed ``seed``."""
    from ..encoders.registry import TORCH_EXTRA_HINT, torch_installed

    if not torch_installed():
        raise IMRSError(f"training a projection head needs PyTorch, which this install leaves out; "
                        f"add it with: {TORCH_EXTRA_HINT}")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: more threads only add contention (3x slower on 2 busy cores)
    try:
        return _train(x, labels, dim, hidden, epochs, batch_size, lr, weight_decay, scale, dropout, seed)
    finally:
        torch.set_num_threads(threads)


def _train(x: np.ndarray, labels: np.ndarray, dim: int, hidden: int, epochs: int, batch_size: int, lr: float,
           weight_decay: float, scale: float, dropout: float, seed: int) -> ProjectionHead:
    import torch
    from torch import nn

    x = np.asarray(x, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    x, labels = x[keep], labels[keep]
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("a projection head needs at least two labelled classes")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    d_in = x.shape[1]
    if hidden > 0:
        body = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, dim))
    else:
        body = nn.Sequential(nn.Linear(d_in, dim))
    proxies = nn.Parameter(torch.randn(len(classes), dim, generator=gen) / np.sqrt(dim))
    params = [*body.parameters(), proxies]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * int(np.ceil(len(x) / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    body.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(xt), batch_size):
            idx = perm[s:s + batch_size]
            if len(idx) < 2:
                continue
            z = nn.functional.normalize(body(xt[idx]), dim=1)
            logits = scale * z @ nn.functional.normalize(proxies, dim=1).T
            loss = loss_fn(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log.debug("head epoch %d: loss %.4f", epoch, total / len(xt))
    body.eval()
    return _to_numpy(body)


def _to_numpy(body) -> ProjectionHead:
    """Linear layers as (W^T, b), with eval-mode BatchNorm folded into the preceding Linear."""
    from torch import nn

    mods = list(body)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double().numpy().T
            b = m.bias.detach().double().numpy()
            if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm1d):
                bn = mods[i + 1]
                g = (bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()).numpy()
                w = w * g
                b = (b - bn.running_mean.double().numpy()) * g + bn.bias.detach().double().numpy()
                i += 1
            layers.append((w.astype(np.float32), b.astype(np.float32)))
        i += 1
    return ProjectionHead(layers)
