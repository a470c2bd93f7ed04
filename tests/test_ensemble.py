"""tools/ensemble.py: score pickles are read without running code; weights must be finite."""
import pickle

import numpy as np
import pytest

from tools import ensemble


def test_a_crafted_scores_pickle_runs_nothing(tmp_path, crafted):
    marker, payload = crafted
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": payload}, f)
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump((["x"], [0]), f)
    with pytest.raises(SystemExit) as info:
        ensemble.main([str(tmp_path / "evil.pkl"), "--label", str(tmp_path / "label.pkl")])
    assert str(info.value) == (f"error: {tmp_path / 'evil.pkl'}: not a scores pickle of linear/fine-tune "
                               "evaluation, not loaded (it refers to io.open, which a data file never holds)")
    assert not marker.exists()


def test_numpy_arrays_of_every_pickle_protocol_load(tmp_path):
    for protocol in (2, 4, 5):
        with open(tmp_path / "s.pkl", "wb") as f:
            pickle.dump({"x": np.array([1.0, 2.0], np.float32), "y": np.array([0.5, 0.0])}, f, protocol=protocol)
        assert ensemble.load_scores(str(tmp_path / "s.pkl"))["x"].tolist() == [1.0, 2.0]


def test_non_finite_weights_are_refused(tmp_path):
    with open(tmp_path / "s.pkl", "wb") as f:
        pickle.dump({"x": np.array([1.0, 0.0])}, f)
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump((["x"], [0]), f)
    scores = str(tmp_path / "s.pkl")
    for bad in ("nan", "inf"):
        with pytest.raises(SystemExit) as info:
            ensemble.main([scores, scores, "--label", str(tmp_path / "label.pkl"), "--weights", "1", bad])
        assert str(info.value) == f"error: --weights 1.0 {float(bad)}: every weight must be a finite number"
