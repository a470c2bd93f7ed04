"""Kinematic body of the synthetic demo clips (feeder/prepare/demo.py): a 25-joint Kinect v2 skeleton
with adult bone lengths, posed by per-frame limb angles. No torch here.
"""
import numpy as np

# Local body frame, metres: x to the performer's right, y up, z backwards (the performer faces -z).
# 0-based joints: arms are shoulder, elbow, wrist, hand, hand tip, thumb; legs hip, knee, ankle, foot.
ARMS = {-1: ("l", (4, 5, 6, 7, 21, 22)), 1: ("r", (8, 9, 10, 11, 23, 24))}
LEGS = {-1: ("l", (12, 13, 14, 15)), 1: ("r", (16, 17, 18, 19))}
UPPER_ARM, FOREARM, HAND, HAND_TIP, THUMB, THIGH, SHIN = 0.29, 0.26, 0.08, 0.08, 0.05, 0.43, 0.42


def limb_direction(elevation, azimuth, side):
    """Unit limb direction: hanging at elevation 0, raised sideways (azimuth 0) or forwards (pi/2)."""
    return np.stack([side * np.sin(elevation) * np.cos(azimuth), -np.cos(elevation),
                     -np.sin(elevation) * np.sin(azimuth)], -1)


def rest_pose(t):
    """Pose parameters of a relaxed stance: each limb segment is (T, 2) elevation, azimuth."""
    T = len(t)
    pose = {"root": np.zeros((T, 3)), "pitch": np.zeros(T)}
    for side in "lr":
        pose[side + "_upper"] = np.tile([0.12, 0.0], (T, 1))
        pose[side + "_fore"] = np.tile([0.15, np.pi / 2], (T, 1))
        pose[side + "_thigh"] = np.tile([0.02, 0.0], (T, 1))
        pose[side + "_shin"] = np.zeros((T, 2))
    return pose


def forward_kinematics(pose, scale):
    """Forward kinematics: pose parameters -> (T, 25, 3) joints in the local body frame."""
    root, pitch = pose["root"], pose["pitch"]
    T = len(root)
    J = np.zeros((T, 25, 3))

    def trunk(height, x=0.0):  # a point of the trunk, which leans forwards by `pitch` about the spine base
        return root + np.stack([np.full(T, x), height * np.cos(pitch), -height * np.sin(pitch)], -1)

    J[:, 0], J[:, 1], J[:, 20], J[:, 2], J[:, 3] = (trunk(h) for h in (0.0, 0.25, 0.47, 0.54, 0.67))
    for side, (key, (shoulder, elbow, wrist, hand, tip, thumb)) in ARMS.items():
        elevation, azimuth = pose[key + "_fore"].T
        upper, fore = limb_direction(*pose[key + "_upper"].T, side), limb_direction(elevation, azimuth, side)
        J[:, shoulder] = trunk(0.44, side * 0.18)
        J[:, elbow] = J[:, shoulder] + UPPER_ARM * upper
        J[:, wrist] = J[:, elbow] + FOREARM * fore
        J[:, hand] = J[:, wrist] + HAND * fore
        J[:, tip] = J[:, hand] + HAND_TIP * fore
        J[:, thumb] = J[:, hand] + THUMB * limb_direction(elevation - 0.6, azimuth, side)
    for side, (key, (hip, knee, ankle, foot)) in LEGS.items():
        J[:, hip] = root + [side * 0.09, -0.05, 0.0]
        J[:, knee] = J[:, hip] + THIGH * limb_direction(*pose[key + "_thigh"].T, side)
        J[:, ankle] = J[:, knee] + SHIN * limb_direction(*pose[key + "_shin"].T, side)
        J[:, foot] = J[:, ankle] + [0.0, -0.05, -0.12]
    return J * scale


def bend_knees(pose, knee, side_keys="lr"):
    """Squat-like flexion by `knee` radians with the feet kept under the body."""
    for s in side_keys:
        pose[s + "_thigh"] = np.stack([knee, np.full_like(knee, np.pi / 2)], -1)
        pose[s + "_shin"] = np.stack([-0.8 * knee, np.full_like(knee, np.pi / 2)], -1)
    pose["root"][:, 1] -= THIGH * (1 - np.cos(knee)) + SHIN * (1 - np.cos(0.8 * knee))
    pose["root"][:, 2] += THIGH * np.sin(knee) - SHIN * np.sin(0.8 * knee)


def set_arm(pose, key, upper, fore, azimuth=np.pi / 2):
    """Set both segments of one arm from elevation arrays, with a shared azimuth (forwards by default)."""
    pose[key + "_upper"] = np.stack(np.broadcast_arrays(upper, azimuth), -1).astype(float)
    pose[key + "_fore"] = np.stack(np.broadcast_arrays(fore, azimuth), -1).astype(float)


def rotate_yaw(points, angle):
    """Rotate (..., 3) points about the vertical axis by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
