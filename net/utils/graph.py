"""The 3-subset skeleton graph of the SkeleMixCLR release (its ntu_rgb_d graph; docs/method.md §2)."""
import numpy as np

from net.utils.layouts import DEFAULT_LAYOUT, get_layout


def edge2mat(edges, num_nodes):
    """Adjacency with A[j, i] = 1 for every edge (i, j), i.e. i -> j (docs/method.md §2)."""
    A = np.zeros((num_nodes, num_nodes), dtype=np.float32)
    for i, j in edges:
        A[j, i] = 1
    return A


def normalize_digraph(A):
    """Divide every column of A by its sum; columns that sum to zero stay zero (docs/method.md §2)."""
    column_sums = A.sum(0)
    scale = np.divide(1, column_sums, out=np.zeros_like(column_sums), where=column_sums > 0)
    return (A * scale).astype(np.float32)


class Graph:
    """Identity, normalised inward and normalised outward adjacency of a layout, stacked in `A` (docs/method.md §2)."""

    def __init__(self, layout=DEFAULT_LAYOUT, strategy="spatial"):
        if strategy != "spatial":
            raise ValueError(f"unknown graph strategy {strategy!r}; only 'spatial' (3 subsets) is defined")
        self.layout = get_layout(layout)
        self.num_node = self.layout.num_joints
        self.inward = self.layout.edges
        self.outward = [(parent, child) for child, parent in self.inward]
        self.A = np.stack((
            edge2mat([(i, i) for i in range(self.num_node)], self.num_node),
            normalize_digraph(edge2mat(self.inward, self.num_node)),
            normalize_digraph(edge2mat(self.outward, self.num_node)),
        ))
