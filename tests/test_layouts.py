"""net/utils/layouts.py: every layout's graph, parts and bones, NTU against docs/method.md, and that the
encoder, SkeleMix, streams, preprocessing and feeder take the layout they are given."""
import numpy as np
import pytest
import torch
from flat import classifier

from feeder.feeder import Feeder
from feeder.prepare.preprocess import preprocess_clip
from feeder.streams import bone
from net.skelemix import SkeleMix
from net.utils.graph import Graph
from net.utils.layouts import JOINT_MAPS, LAYOUTS, Layout, get_layout, joint_map

# docs/method.md §2 / §1.4 / §3.2 / §1.3, 1-based, copied from the text.
PAPER_INWARD = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
               (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
               (22, 23), (23, 8), (24, 25), (25, 12)]
PAPER_BONES = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
              (21, 21), (22, 23), (23, 8), (24, 25), (25, 12)]
PAPER_PARTS = [{1, 2, 3, 4, 21}, {5, 6, 7, 8, 22, 23}, {9, 10, 11, 12, 24, 25}, {13, 14, 15, 16},
              {17, 18, 19, 20}]
# Kinect SDK v1 order from the issue (0-based): the joints each name is.
KINECT_V1 = dict(hip_center=0, spine=1, shoulder_center=2, head=3, l_shoulder=4, l_elbow=5, l_wrist=6,
                 l_hand=7, r_shoulder=8, r_elbow=9, r_wrist=10, r_hand=11, l_hip=12, l_knee=13, l_ankle=14,
                 l_foot=15, r_hip=16, r_knee=17, r_ankle=18, r_foot=19)
NAMES = sorted(LAYOUTS)


def normalised(edges, v):
    """Column-normalised adjacency (A[j, i] = 1 for i -> j) with plain loops (docs/method.md §2)."""
    A = np.zeros((v, v))
    for i, j in edges:
        A[j, i] = 1.0
    for col in range(v):
        if A[:, col].sum():
            A[:, col] /= A[:, col].sum()
    return A


def test_ntu_layout_is_the_spec():
    ntu = get_layout("ntu-rgb+d")
    assert ntu.num_joints == 25 and ntu.center == 21 and ntu.shoulders == (5, 9)
    assert list(ntu.inward) == PAPER_INWARD
    assert ntu.bone_pairs == [(c - 1, p - 1) for c, p in PAPER_BONES]
    assert [set(part) for part in ntu.parts] == PAPER_PARTS
    A = Graph("ntu-rgb+d").A  # bit-identical to the construction of docs/method.md §2 in float32
    edges = [(c - 1, p - 1) for c, p in PAPER_INWARD]
    np.testing.assert_array_equal(A, np.float32([np.eye(25), normalised(edges, 25),
                                                 normalised([(p, c) for c, p in edges], 25)]))


@pytest.mark.parametrize("name", NAMES)
def test_graph_adjacency_is_normalised_as_spec(name):
    layout = LAYOUTS[name]
    v, edges = layout.num_joints, layout.edges
    A = Graph(name).A
    assert A.shape == (3, v, v) and A.dtype == np.float32
    np.testing.assert_array_equal(A[0], np.eye(v))
    np.testing.assert_allclose(A[1], normalised(edges, v), atol=1e-7)
    np.testing.assert_allclose(A[2], normalised([(p, c) for c, p in edges], v), atol=1e-7)
    for subset in A[1:]:
        assert set(np.round(subset.sum(0), 6)) <= {0.0, 1.0}


@pytest.mark.parametrize("name", NAMES)
def test_every_joint_in_exactly_one_part_trunk_first(name):
    layout = LAYOUTS[name]
    members = [j for part in layout.parts for j in part]
    assert len(layout.parts) == 5 and sorted(members) == list(range(1, layout.num_joints + 1))
    trunk, left_arm, right_arm = (set(p) for p in layout.parts[:3])
    assert layout.center in trunk
    assert layout.shoulders[0] in left_arm and layout.shoulders[1] in right_arm
    assert layout.part_joints == [[j - 1 for j in part] for part in layout.parts]


@pytest.mark.parametrize("name", NAMES)
def test_bones_reference_valid_parents_and_reach_the_centre(name):
    layout = LAYOUTS[name]
    v, center = layout.num_joints, layout.center - 1
    pairs = layout.bone_pairs
    assert [c for c, _ in pairs] == list(range(v))  # one bone per joint, in joint order
    assert dict(pairs)[center] == center  # the centre's bone is zero
    parent = dict(pairs)
    for joint in range(v):
        assert 0 <= parent[joint] < v
        for _ in range(v):
            joint = parent[joint]
        assert joint == center  # a tree: every chain of parents ends at the centre


def test_kinect_v1_is_the_sdk_order():
    k = KINECT_V1
    layout = get_layout("kinect-v1")
    expected_edges = {(k["hip_center"], k["spine"]), (k["spine"], k["shoulder_center"]),
                      (k["head"], k["shoulder_center"])}
    for side in "lr":
        chain = [f"{side}_shoulder", f"{side}_elbow", f"{side}_wrist", f"{side}_hand"]
        expected_edges |= {(k[a], k[b]) for b, a in zip(chain, chain[1:])}
        expected_edges.add((k[f"{side}_shoulder"], k["shoulder_center"]))
        chain = [f"{side}_hip", f"{side}_knee", f"{side}_ankle", f"{side}_foot"]
        expected_edges |= {(k[a], k[b]) for b, a in zip(chain, chain[1:])}
        expected_edges.add((k[f"{side}_hip"], k["hip_center"]))
    assert set(layout.edges) == expected_edges and layout.num_joints == 20
    assert layout.center - 1 == k["shoulder_center"]
    assert tuple(j - 1 for j in layout.shoulders) == (k["l_shoulder"], k["r_shoulder"])


def test_coco_is_the_keypoint_order():
    coco = get_layout("coco")
    # 0 nose, 1/2 eyes, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees,
    # 15/16 ankles (left first).
    assert coco.num_joints == 17 and coco.center - 1 == 0 and tuple(j - 1 for j in coco.shoulders) == (5, 6)
    assert {(9, 7), (7, 5), (15, 13), (13, 11), (11, 5)} <= set(coco.edges)  # left wrist..hip..ankle chains


@pytest.mark.parametrize("source, target", sorted(JOINT_MAPS))
def test_mapped_edges_are_target_edges_or_paths_through_missing_joints(source, target):
    mapped = JOINT_MAPS[source, target]
    parent = dict(get_layout(target).inward)
    for child, par in get_layout(source).inward:
        walk = parent[mapped[child - 1]]
        while walk not in mapped:  # skip the target joints the source lacks (NTU's neck for Kinect v1)
            walk = parent[walk]
        assert walk == mapped[par - 1], (child, par)


def test_joint_map_kinect_v1_to_ntu():
    index = joint_map("kinect-v1", "ntu-rgb+d")
    # NTU joint (1-based) <- Kinect v1 joint (0-based); 3 neck, 22/23 left hand tip/thumb, 24/25 right.
    expected = {1: 0, 2: 1, 3: 2, 4: 3, 21: 2, 22: 7, 23: 7, 24: 11, 25: 11}
    expected.update({j: j - 1 for j in range(5, 21)})
    assert index == [expected[j] for j in range(1, 26)]
    assert joint_map("coco", "coco") == list(range(17))
    with pytest.raises(ValueError, match="no joint map from layout 'coco' to 'ntu-rgb\\+d'"):
        joint_map("coco", "ntu-rgb+d")


def test_unknown_and_inconsistent_layouts_are_named():
    with pytest.raises(ValueError, match="unknown skeleton layout 'kinect-v3'; known: ntu-rgb\\+d, kinect"):
        get_layout("kinect-v3")
    good = dict(name="toy", num_joints=3, inward=((1, 2), (3, 2)), center=2, shoulders=(1, 3),
                parts=((2,), (1,), (3,)))
    assert Layout(**good).bone_pairs == [(0, 1), (1, 1), (2, 1)]
    bad = [(dict(inward=((1, 2),)), "one parent"), (dict(inward=((1, 2), (3, 4))), "outside"),
           (dict(parts=((1, 2), (2, 3))), "exactly once"), (dict(shoulders=(1, 5)), "shoulders"),
           (dict(inward=((1, 3), (3, 1))), "joint 1 is on a cycle")]
    for change, message in bad:
        with pytest.raises(ValueError, match=f"layout 'toy': .*{message}"):
            Layout(**{**good, **change})


# --- the shared code takes the layout it is given ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_encoder_builds_the_layout_graph(name):
    v = LAYOUTS[name].num_joints
    torch.manual_seed(0)
    model = classifier(hidden_channels=4, hidden_dim=16, num_class=5, graph_args=dict(layout=name))
    assert model.encoder.A.shape == (3, v, v) and model.encoder.data_bn.num_features == 3 * v
    assert model(torch.randn(2, 3, 16, v, 2)).shape == (2, 5)
    if name == "coco":  # 2D keypoints: two input channels
        model2d = classifier(in_channels=2, hidden_channels=4, hidden_dim=16, num_class=5,
                        graph_args=dict(layout=name))
        assert model2d(torch.randn(2, 2, 16, v, 1)).shape == (2, 5)


@pytest.mark.parametrize("name", NAMES)
def test_bone_stream_uses_the_layout(name):
    layout = LAYOUTS[name]
    x = torch.randn(2, 3, 4, layout.num_joints, 2, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros_like(x)
    for child, par in layout.inward:
        expected[..., child - 1, :] = x[..., child - 1, :] - x[..., par - 1, :]
    if layout.dims == 2:  # (x, y, score): the score is no coordinate, every bone keeps its joint's
        expected[:, 2] = x[:, 2]
    assert torch.equal(bone(x, name), expected)
    np.testing.assert_array_equal(bone(x[0].numpy(), name), expected[0].numpy())


@pytest.mark.parametrize("name", NAMES)
def test_skelemix_cuts_the_layout_parts(name):
    layout = LAYOUTS[name]
    x = torch.arange(4 * 3 * 16 * layout.num_joints * 2, dtype=torch.float32).reshape(4, 3, 16, -1, 2)
    mix = SkeleMix(layout=name)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mixed, mask, _ = mix(x, 1, 5, 1, 4, generator=g)
        joints = set(torch.nonzero(mask.any(0)).flatten().tolist())
        chosen = [set(p) for p in layout.part_joints if set(p) & joints]
        assert set().union(*chosen) == joints  # the region is a union of whole parts
        changed = set(torch.nonzero((mixed != x).flatten(0, 2).any(0).any(-1)).flatten().tolist())
        assert changed == joints


@pytest.mark.parametrize("name", [name for name in NAMES if LAYOUTS[name].dims == 3])
@pytest.mark.parametrize("turn", [1, -1])
def test_preprocessing_centres_and_aligns_with_the_layout(name, turn):
    """A body turned about y by a yaw of one sign comes back with its shoulder line on the x axis."""
    layout = LAYOUTS[name]
    left, right = (j - 1 for j in layout.shoulders)
    rng = np.random.default_rng(0)
    x = np.zeros((3, 30, layout.num_joints, 2), np.float32)
    x[:, :20, :, 0] = rng.normal(0, 0.3, (3, 20, layout.num_joints)) + [[[0.1]], [[0.2]], [[3.0]]]
    yaw = 0.6 + 0.3 * np.sin(np.arange(20))  # shoulders 0.4 m apart, turned towards or away from the camera
    x[:, :20, right, 0] = x[:, :20, left, 0] + 0.4 * np.stack([np.cos(yaw), np.zeros(20), turn * np.sin(yaw)])
    position, _ = preprocess_clip(x, frames=8, layout=name)
    assert position.shape == (3, 8, layout.num_joints, 2) and not position[..., 1].any()
    np.testing.assert_allclose(position[:, :, layout.center - 1, 0], 0, atol=1e-6)
    shoulder_line = position[:, :, right, 0] - position[:, :, left, 0]
    np.testing.assert_allclose(shoulder_line[2], 0, atol=1e-3)  # turned onto the x axis
    assert (shoulder_line[0] > 0.39).all()  # left to right along +x (a bit shorter: frames are mixed)


def test_2d_coco_keypoints_stay_in_the_image_plane():
    x = np.zeros((3, 12, 17, 2), np.float32)
    x[:2, :, :, 0] = np.random.default_rng(0).normal(0, 0.3, (2, 12, 17)) + 1.0
    position, _ = preprocess_clip(x, frames=8, layout="coco")
    np.testing.assert_allclose(position[2], 0, atol=1e-6)


def test_ntu_preprocessing_is_the_default():
    x = np.random.default_rng(1).normal(0, 1, (3, 40, 25, 2)).astype(np.float32)
    for a, b in zip(preprocess_clip(x, 16), preprocess_clip(x, 16, "ntu-rgb+d")):
        np.testing.assert_array_equal(a, b)


def test_feeder_checks_the_joint_count_of_its_layout(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 8, 20, 2), np.float32))
    np.save(tmp_path / "y.npy", np.zeros((2, 1), np.int64))
    clip, _, _ = Feeder(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), layout="kinect-v1")[1]
    assert clip.shape == (3, 8, 20, 2)
    with pytest.raises(ValueError, match="expected shape \\(N, 3, T, 25, M\\)"):
        Feeder(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
