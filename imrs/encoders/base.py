"""Compatibility names for code written against the old single-module ``imrs.encoders.base``.

The encoder package is split by idea (registry, preprocess, weights, pipeline, runtime, encoder);
import from those modules or from ``imrs.encoders``. This module only re-exports, so branches and
user scripts that still say ``from imrs.encoders.base import X`` keep working; nothing in IMRS
imports it.
"""

from __future__ import annotations

from . import *  # noqa: F403  (every public name of the package)
from .encoder import WEIGHT_CHOICES  # noqa: F401
from .pipeline import Batch, ProgressArg, decode_workers_for, iter_batches, l2_normalise  # noqa: F401
from .preprocess import ImageLike, single_threaded_torch_worker  # noqa: F401
from .registry import DEFAULT_RUNTIMES  # noqa: F401
from .weights import (  # noqa: F401
    checkpoint_env_var,
    find_local_checkpoint,
    host_reachable,
    load_checkpoint_into,
    load_state_dict_file,
    offline_forced,
    weights_unavailable,
    wrap_download_errors,
)
