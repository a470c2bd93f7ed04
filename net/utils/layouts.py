"""Skeleton layouts as data (docs/method.md §1.4, §2, §3.2): joints, edges, body parts, centre and shoulders.

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
    dims: int = 3   # 3: channels (x, y, z); 2: (x, y, score), the score a channel no geometric step uses

    def __post_init__(self):
        """A new layout is checked where it is defined: a tree of edges to the centre, parts covering all."""
        joints = set(range(1, self.num_joints + 1))
        children = [c for c, _ in self.inward]
        members = sorted(j for part in self.parts for j in part)
        problems = [
            (not {j for edge in self.inward for j in edge} <= joints, "an edge names a joint outside 1..V"),
            (sorted(children) != sorted(joints - {self.center}), "each non-centre joint needs one parent"),
            (members != sorted(joints), "the parts must hold every joint exactly once"),
            (not {self.center, *self.shoulders} <= joints or len(self.shoulders) != 2,
             "centre and the two shoulders must be joints"),
            (self.dims not in (2, 3), "dims must be 2 (x, y, score) or 3 (x, y, z)"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(f"skeleton layout {self.name!r}: {message}")
        parent = dict(self.inward)
        for joint in joints:  # every joint must reach the centre: no cycles, one tree
            seen = set()
            while joint != self.center:
                if joint in seen:
                    raise ValueError(f"skeleton layout {self.name!r}: joint {joint} is on a cycle of edges")
                seen.add(joint)
                joint = parent[joint]

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
    # Kinect SDK v1 (NW-UCLA): 1 HipCenter, 2 Spine, 3 ShoulderCenter, 4 Head, 5-8 left shoulder,
    # elbow, wrist, hand, 9-12 right arm, 13-16 left hip, knee, ankle, foot, 17-20 right leg.
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
    # COCO keypoints in 2D, channels (x, y, score) as PYSKL stores them (score 0: missing or dropped):
    # 1 nose, 2/3 eyes, 4/5 ears, 6/7 shoulders, 8/9 elbows, 10/11 wrists, 12/13 hips, 14/15 knees,
    # 16/17 ankles, left before right. No neck: the nose is the root, as in PYSKL's coco graph.
    "coco": Layout(
        name="coco",
        num_joints=17,
        inward=((2, 1), (3, 1), (4, 2), (5, 3), (6, 1), (7, 1), (8, 6), (9, 7), (10, 8),
                (11, 9), (12, 6), (13, 7), (14, 12), (15, 13), (16, 14), (17, 15)),
        center=1,
        shoulders=(6, 7),
        parts=((1, 2, 3, 4, 5), (6, 8, 10), (7, 9, 11), (12, 14, 16), (13, 15, 17)),
        dims=2,
    ),
}

# (source, target) -> for every source joint, the target joint (1-based) that is the same body point.
# Kinect v1 is Kinect v2 without neck, hand tips and thumbs; its ShoulderCenter is v2's SpineShoulder.
JOINT_MAPS = {
    ("kinect-v1", "ntu-rgb+d"): (1, 2, 21, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20),
}


DEFAULT_LAYOUT = "ntu-rgb+d"  # NTU RGB+D's 25 joints: every model, feeder and tool unless told otherwise


def get_layout(name):
    """The registered layout called `name`, or a one-line error listing the known ones."""
    if isinstance(name, Layout):
        return name
    if name not in LAYOUTS:
        raise ValueError(f"unknown skeleton layout {name!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def joint_map(source, target):
    """0-based source joint for every target joint, to re-express a clip in another layout (transfer).

    A target joint the source lacks copies its nearest mapped ancestor in the target tree (its bone
    is then zero), e.g. Kinect v1 -> NTU: neck <- ShoulderCenter, left hand tip and thumb <- left hand.
    """
    source, target = get_layout(source), get_layout(target)
    if source.name == target.name:
        return list(range(source.num_joints))
    if (source.name, target.name) not in JOINT_MAPS:
        raise ValueError(f"no joint map from layout {source.name!r} to {target.name!r}; known: "
                         f"{', '.join(f'{s} -> {t}' for s, t in JOINT_MAPS)}")
    where = {t: s for s, t in enumerate(JOINT_MAPS[source.name, target.name])}
    parent = dict(target.inward)
    out = []
    for joint in range(1, target.num_joints + 1):
        while joint not in where:
            if joint == target.center:
                raise ValueError(f"joint map {source.name} -> {target.name} lacks the centre joint {joint}")
            joint = parent[joint]
        out.append(where[joint])
    return out
