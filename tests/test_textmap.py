"""ConSE text -> image for backbones without a text tower."""

from __future__ import annotations

import numpy as np
import pytest

from imrs.textmap import ConseMapper, ConseParams
from tests.conftest import caltech_subset

# Caltech classes whose names MiniLM can tie to ImageNet classes (not airplanes: in this copy of
# Caltech-101 they are edge maps, which the ImageNet classifier calls envelopes and flutes)
CLASSES = ["sunflower", "Leopards", "Motorbikes", "pizza", "laptop", "revolver", "starfish", "strawberry"]


def _synthetic_mapper() -> tuple[ConseMapper, np.ndarray]:
    """3 'ImageNet' classes whose classifier rows are axes 0..2 of a 4-d feature space; images of
    class c sit near axis c. Name embeddings are set directly so no sentence model is needed."""
    rng = np.random.default_rng(0)
    w = np.eye(3, 4, dtype=np.float32) * 4.0
    mapper = ConseMapper(w, np.zeros(3, np.float32), ["cat", "dog", "car"], feature_norm=1.0,
                         params=ConseParams(top_classes=2, keep_classes=3, consensus_k=3, rerank_pool=12,
                                            prototype_size=3))
    mapper._name_emb = np.eye(3, 5, dtype=np.float32)
    labels = np.repeat(np.arange(3), 6)
    x = np.eye(3, 4, dtype=np.float32)[labels] + 0.2 * rng.normal(size=(18, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mapper.fit(x)
    return mapper, labels


def test_conse_synthetic_maps_text_to_the_right_images() -> None:
    mapper, labels = _synthetic_mapper()
    for c in range(3):
        tvec = np.eye(5, dtype=np.float32)[c] + 0.1
        tvec /= np.linalg.norm(tvec)
        classes, weights = mapper.class_weights("ignored", text_vec=tvec)
        assert classes[0] == c and weights.sum() == pytest.approx(1.0)
        q = mapper.query_vector("ignored", text_vec=tvec)
        assert q.shape == (4,) and np.linalg.norm(q) == pytest.approx(1.0, rel=1e-5)
        top = np.argsort(-(mapper.vectors @ q))[:6]
        assert (labels[top] == c).all()


@pytest.fixture(scope="module")
def subset_vectors():
    from imrs.encoders import get_encoder

    files = caltech_subset(CLASSES, 8)
    enc = get_encoder("efficientnet_lite0", device="cpu")
    res = enc.embed_paths(files)
    labels = np.asarray([CLASSES.index(files[i].parent.name) for i in res.kept.tolist()])
    return enc, res.vectors, labels, files


@pytest.mark.slow
def test_conse_class_names_rank_their_class_first(subset_vectors) -> None:
    from imrs.textmap import estimate_feature_norm

    enc, vecs, labels, files = subset_vectors
    norm = estimate_feature_norm(enc, files[::8])
    assert 5.0 < norm < 50.0
    mapper = ConseMapper.from_encoder(enc, feature_norm=norm).fit(vecs)
    first_right = 0
    for c, name in enumerate(CLASSES):
        q = mapper.query_vector(f"{name.lower()}")
        order = np.argsort(-(vecs @ q))
        first_right += int(labels[order[0]] == c)
        # most of the top 5 images are of the asked class
        assert (labels[order[:5]] == c).sum() >= 3, name
    assert first_right >= 7


@pytest.mark.slow
def test_collection_search_text_without_text_tower(small_collection, home) -> None:
    from imrs.collection import Collection
    from imrs.textsearch import text_query_vector

    coll = Collection(small_collection, "efficientnet_lite0", "flat_ip", home=home)
    coll.sync()
    assert not coll.encoder.supports_text
    for label in ("sunflower", "Leopards", "watch"):
        hits = coll.search_vectors(text_query_vector(coll, f"a photo of a {label.lower()}"), k=5)[0]
        assert len(hits) == 5
        assert sum(h.label == label for h in hits) >= 4, label
    # the per-collection cache is written once and reused
    cache = coll.state_dir / "textmap_efficientnet_lite0.npz"
    assert cache.is_file()
    mtime = cache.stat().st_mtime_ns
    coll.search_vectors(text_query_vector(coll, "a photo of a watch"), k=3)
    assert cache.stat().st_mtime_ns == mtime
