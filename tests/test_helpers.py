"""The tree comparisons every resume, mesh and portability test relies on fail on a tree of another
shape: a missing or extra leaf, another key, shape or dtype, before any value is compared."""

import numpy as np
import pytest

from tests.helpers import assert_trees_close, assert_trees_equal

TREE = {"conv1": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}, "step": np.int32(4)}


def changed(**leaves):
    return {"conv1": {**TREE["conv1"], **leaves}, "step": TREE["step"]}


@pytest.mark.parametrize("compare", [assert_trees_equal, assert_trees_close])
def test_tree_comparisons_check_the_structure_before_the_values(compare):
    compare(TREE, TREE)
    extra = changed(extra=np.zeros(3, np.float32))
    missing = {"conv1": {"kernel": TREE["conv1"]["kernel"]}, "step": TREE["step"]}
    renamed = {"conv1": {"kernel": TREE["conv1"]["kernel"], "bias_": TREE["conv1"]["bias"]}, "step": TREE["step"]}
    for other in (extra, missing, renamed):
        for actual, expected in ((other, TREE), (TREE, other)):
            with pytest.raises(AssertionError, match="tree paths differ"):
                compare(actual, expected)
    # Broadcastable or equal values under another shape or dtype are still another tree.
    for other in (changed(bias=np.zeros((1, 3), np.float32)), changed(bias=np.zeros(3, np.float64))):
        with pytest.raises(AssertionError, match="shapes or dtypes differ"):
            compare(other, TREE)
    with pytest.raises(AssertionError):
        compare(changed(bias=np.full(3, 1.0, np.float32)), TREE)
