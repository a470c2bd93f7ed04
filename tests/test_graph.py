"""The 3-subset skeleton graph against an independent construction from docs/method.md §2."""
import numpy as np
import pytest

from net.utils.graph import Graph
from net.utils.layouts import LAYOUTS

# docs/method.md §2 inward edges, 1-based (child, parent).
NTU_INWARD = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
              (22, 23), (23, 8), (24, 25), (25, 12)]


def column_normalised(edges, num_nodes):
    """A[j, i] = 1 for i -> j, each column divided by its sum, written with plain loops."""
    A = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        A[j, i] = 1.0
    for col in range(num_nodes):
        total = sum(A[row, col] for row in range(num_nodes))
        if total:
            A[:, col] /= total
    return A


def test_ntu_graph_matches_independent_construction():
    A = Graph("ntu-rgb+d", "spatial").A
    inward = [(c - 1, p - 1) for c, p in NTU_INWARD]
    outward = [(p, c) for c, p in inward]
    assert A.shape == (3, 25, 25) and A.dtype == np.float32
    np.testing.assert_array_equal(A[0], np.eye(25))
    np.testing.assert_allclose(A[1], column_normalised(inward, 25), atol=1e-7)
    np.testing.assert_allclose(A[2], column_normalised(outward, 25), atol=1e-7)


def test_ntu_graph_numbers():
    A = Graph().A
    assert A[1, 1, 0] == 1.0            # joint 1 -> its parent 2
    assert A[1, :, 20].sum() == 0.0      # joint 21 is the root: no inward edge leaves it
    # Joint 21 has children 2, 3, 5, 9: outward column 21 spreads 1/4 to each.
    np.testing.assert_allclose(A[2, [1, 2, 4, 8], 20], 0.25)
    np.testing.assert_allclose(A[2, [12, 16], 0], 0.5)   # joint 1 -> children 13, 17
    assert A[2, 0, 1] == 1.0             # joint 2 -> its only child 1
    assert A[2, :, 3].sum() == 0.0       # joint 4 (head) has no child


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_builds_with_unit_or_zero_column_sums(name):
    A = Graph(layout=name).A
    v = LAYOUTS[name].num_joints
    assert A.shape == (3, v, v) and A.dtype == np.float32
    np.testing.assert_array_equal(A[0], np.eye(v))
    for subset in (1, 2):
        sums = A[subset].sum(0)
        assert np.all(np.isclose(sums, 1.0, atol=1e-6) | (sums == 0)), (name, subset, sums)
        assert np.count_nonzero(A[subset]) == len(LAYOUTS[name].inward)
    np.testing.assert_array_equal(A[1] > 0, (A[2] > 0).T)


def test_unknown_strategy_and_layout_are_named():
    with pytest.raises(ValueError, match="distance"):
        Graph(strategy="distance")
    with pytest.raises(ValueError, match="nope"):
        Graph(layout="nope")
