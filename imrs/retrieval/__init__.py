"""Retrieval quality beyond plain nearest neighbours, all measured by ``imrs bench``.

* :mod:`.qe` — average / alpha query expansion and database-side augmentation (unsupervised,
  re-uses the index's own neighbours).
* :mod:`.whiten` — PCA whitening learned on the collection (optionally reducing dimensions).
* :mod:`.head` — a small projection head trained with a metric-learning loss on folder labels,
  giving compact vectors (supervised: evaluated on held-out images only).
* :mod:`.fusion` — concatenation of several backbones' normalised features.

Every transform works on float32 arrays of L2-normalised rows and returns the same, so any
``imrs.indexes`` kind can index the result.
"""

from __future__ import annotations

from .fusion import fuse_backbones
from .head import ProjectionHead, train_head
from .qe import alpha_qe, average_qe, database_augment, expand_queries
from .whiten import PCAWhitening

__all__ = ["PCAWhitening", "ProjectionHead", "alpha_qe", "average_qe", "database_augment",
           "expand_queries", "fuse_backbones", "train_head"]
