"""Statistics of results over seeds: mean ± sample std, and the paired 95 % t-interval of a difference."""
import math
import statistics

# Student's t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95 %); beyond 30, the normal 1.96 is within 4 %.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_std(values):
    """Mean and sample standard deviation (n - 1); the std of one value is 0."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_interval(a, b):
    """Mean of a_i - b_i over seeds and its two-sided 95 % interval (paired t, n - 1 degrees of freedom); with one
    pair the interval is unbounded."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need the same seeds on both sides, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        return mean, -math.inf, math.inf
    df = len(diffs) - 1
    half = (T975[df - 1] if df <= len(T975) else 1.96) * std / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def verdict(low, high):
    """'better' or 'worse' only where the interval excludes 0; else 'not significant'."""
    return "better" if low > 0 else "worse" if high < 0 else "not significant"
