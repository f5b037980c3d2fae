"""The batch shared by the multi-process test and its single-process reference."""

import numpy as np

SIZE = 67
BATCH = 8


def make_batch() -> dict:
    rng = np.random.default_rng(11)
    return {
        "images": (rng.standard_normal((BATCH, SIZE, SIZE, 3)) * 60).astype(np.float32),
        "labels": (np.arange(BATCH) % 10).astype(np.int32),
    }
