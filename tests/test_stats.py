"""processor/stats.py against independent computations."""
import math

import numpy as np
import pytest

from processor.stats import T975, mean_std, paired_interval, verdict


def test_mean_std_is_numpys_sample_std():
    values = [74.1, 77.9, 75.3, 72.2]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([3.0]) == (3.0, 0.0)


def test_t_quantiles_match_known_values():
    """Textbook values of t(0.975): df 4 = 2.776, df 9 = 2.262, and the t CDF at the table's values is 0.975."""
    assert T975[3] == 2.776 and T975[8] == 2.262
    from math import gamma

    def t_cdf(t, df, n=20000):  # trapezoid on the density from -60 to t: independent of the table
        xs = np.linspace(-60, t, n)
        c = gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * gamma(df / 2))
        return np.trapezoid(c * (1 + xs ** 2 / df) ** (-(df + 1) / 2), xs)
    for df in (2, 5, 10, 30):
        assert t_cdf(T975[df - 1], df, 200000) == pytest.approx(0.975, abs=5e-4)


def test_paired_interval_of_known_differences():
    a, b = [80.0, 78.0, 79.0, 81.0, 77.0], [75.0, 76.0, 74.0, 77.0, 73.0]  # differences 5, 2, 5, 4, 4
    mean, low, high = paired_interval(a, b)
    d = np.array([5, 2, 5, 4, 4.0])
    half = 2.776 * d.std(ddof=1) / math.sqrt(5)
    assert mean == pytest.approx(4.0) and (low, high) == pytest.approx((4 - half, 4 + half))
    assert verdict(low, high) == "better" and verdict(-1, 2) == "not significant" and verdict(-3, -1) == "worse"
    assert paired_interval([1.0], [0.0]) == (1.0, -math.inf, math.inf)
    with pytest.raises(ValueError, match="same seeds"):
        paired_interval([1.0, 2.0], [1.0])
