"""Skeleton layouts as data (SPEC §1.4, §2, §3.2): joints, edges, body parts, centre and shoulders.

Joint numbers are 1-based as in the dataset documentation; `Layout` offers
0-based views for code. Pure Python: tools, feeders and the network all read it.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    name: str
    num_joints: int
    inward: tuple   # (child, parent) pairs, 1-based: the graph edges and the bones
    center: int     # joint subtracted by preprocessing and given a zero bone
    shoulders: tuple  # (left, right), aligned by preprocessing
    parts: tuple    # SkeleMix parts, trunk first; together they cover every joint once

    @property
    def edges(self):
        """Inward edges, 0-based (child, parent)."""
        return [(c - 1, p - 1) for c, p in self.inward]

    @property
    def bone_pairs(self):
        """(child, parent) pairs, 0-based, for the bone stream: every edge plus (centre, centre)."""
        return sorted(self.edges + [(self.center - 1, self.center - 1)])

    @property
    def part_joints(self):
        """SkeleMix parts as lists of 0-based joint indices."""
        return [[j - 1 for j in part] for part in self.parts]


LAYOUTS = {
    "ntu-rgb+d": Layout(
        name="ntu-rgb+d",
        num_joints=25,
        inward=((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12)),
        center=21,
        shoulders=(5, 9),
        parts=((1, 2, 3, 4, 21), (5, 6, 7, 8, 22, 23), (9, 10, 11, 12, 24, 25),
               (13, 14, 15, 16), (17, 18, 19, 20)),
    ),
    # Kinect SDK v1: 1 HipCenter, 2 Spine, 3 ShoulderCenter, 4 Head, 5-8 left arm,
    # 9-12 right arm, 13-16 left leg, 17-20 right leg.
    "kinect-v1": Layout(
        name="kinect-v1",
        num_joints=20,
        inward=((1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9),
                (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17),
                (19, 18), (20, 19)),
        center=3,
        shoulders=(5, 9),
        parts=((1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20)),
    ),
    # COCO keypoints: 1 nose, 2-5 eyes and ears, 6/7 shoulders, 8/9 elbows, 10/11 wrists,
    # 12/13 hips, 14/15 knees, 16/17 ankles (odd = left). No neck: the nose is the root.
    "coco": Layout(
        name="coco",
        num_joints=17,
        inward=((2, 1), (3, 1), (4, 2), (5, 3), (6, 1), (7, 1), (8, 6), (9, 7), (10, 8),
                (11, 9), (12, 6), (13, 7), (14, 12), (15, 13), (16, 14), (17, 15)),
        center=1,
        shoulders=(6, 7),
        parts=((1, 2, 3, 4, 5), (6, 8, 10), (7, 9, 11), (12, 14, 16), (13, 15, 17)),
    ),
}


def get_layout(name):
    """The registered layout called `name`, or a one-line error listing the known ones."""
    if isinstance(name, Layout):
        return name
    if name not in LAYOUTS:
        raise ValueError(f"unknown skeleton layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
