"""Every accuracy table in README.md and docs/ traces to a result file under results/ (or to the paper), cell by cell.

A table is marked by the comment line right above it:
- `<!-- results/X.json -->`: rows are the file's table rows; columns by header: "paper", "probe", "chance"
  (mean ± std) and "seed N" (that run's "paper / probe");
- `<!-- results/X.json compare -->`: rows "A - B" are the file's paired intervals;
- `<!-- paper -->`: the published numbers (docs/method.md).
"""
import glob
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
MARK = re.compile(r"<!-- (paper|results/[\w.-]+\.json)( compare)? -->")
COLUMNS = {"paper": "paper", "probe": "probe", "chance": "loss_over_chance"}


def tables(path):
    """(marker match or None, header cells, body rows) of each markdown table in `path`."""
    lines = open(path, encoding="utf-8").read().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            mark = MARK.fullmatch(lines[i - 1].strip()) if i else None
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip().strip("*") for c in lines[j].strip("|").split("|")])
                j += 1
            found.append((mark, [c.strip().lower() for c in lines[i].strip("|").split("|")], rows))
            i = j
        else:
            i += 1
    return found


ACCURACY = ("seed", "paper", "probe", "top-1", "skeletonclr", "skelemixclr", "raw joints", "random init", "ntu60",
            "ntu120", "ucla")


def accuracies(header, rows):
    """A table of accuracies: numbers under a header that names a protocol, a method, a baseline or seeds
    (speed tables, "/s", are the benchmark's)."""
    words = " ".join(header)
    return (any(w in words for w in ACCURACY) and "/s" not in words
            and any(re.search(r"\d+\.\d", cell) for row in rows for cell in row[1:]))


def cell(mean, std=None):
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def check_rows(result, header, rows, where):
    by_model = {r["model"]: r for r in result["results"]}
    for row in rows:
        assert row[0] in by_model, f"{where}: row {row[0]!r} is not in the result file"
        entry = by_model[row[0]]
        runs = {run["seed"]: run for run in entry["runs"]}
        for name, text in zip(header[1:], row[1:]):
            seed = re.fullmatch(r"seed (\d+)", name)
            if seed:  # one run: "paper / probe"
                run = runs[int(seed.group(1))]
                expected = f"{run['paper']['top1']:.1f} / {run['probe']['top1']:.1f}"
                assert text == expected, f"{where}: {row[0]} / {name}: {text!r}, the file says {expected!r}"
                continue
            key = next((v for k, v in COLUMNS.items() if k in name), None)
            if key is None or text in ("-", ""):
                continue
            value = entry[key]
            std = entry.get(f"{key}_std") if "±" in text else None
            expected = f"{value:.2f}" if key == "loss_over_chance" else cell(value, std)
            assert text == expected, f"{where}: {row[0]} / {name}: {text!r}, the file says {expected!r}"


def check_comparisons(result, header, rows, where):
    by_pair = {f"{c['row']} - {c['other']}": c for c in result["comparisons"]}
    for row in rows:
        assert row[0] in by_pair, f"{where}: {row[0]!r} is not a comparison of the result file"
        c = by_pair[row[0]]
        for name, text in zip(header[1:], row[1:]):
            key = next((k for k in ("paper", "probe") if k in name), None)
            if key is None:
                continue
            p = c[key]
            expected = f"{p['difference']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}] {p['verdict']}"
            assert text == expected, f"{where}: {row[0]} / {name}: {text!r}, the file says {expected!r}"


@pytest.mark.parametrize("path", DOCS, ids=os.path.basename)
def test_every_number_table_traces_to_a_result_file(path):
    for mark, header, rows in tables(path):
        where = f"{os.path.relpath(path, REPO)} table {header}"
        if not accuracies(header, rows):
            continue
        assert mark, f"{where}: a table of numbers needs a <!-- results/X.json --> or <!-- paper --> line above it"
        if mark.group(1) == "paper":
            continue
        with open(os.path.join(REPO, mark.group(1))) as f:
            result = json.load(f)
        (check_comparisons if mark.group(2) else check_rows)(result, header, rows, where)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "results", "*.json"))), ids=os.path.basename)
def test_result_files_name_their_config_command_seeds_and_commits(path):
    with open(path) as f:
        result = json.load(f)
    assert result["command"].startswith("python main.py ") and result["config"]["rows"]
    for row in result["results"]:
        assert row["runs"] and all(isinstance(run["seed"], int) and run["commit"] for run in row["runs"])
        assert sorted(run["seed"] for run in row["runs"]) == sorted(result["config"]["seeds"])


def test_the_checker_finds_a_cell_that_differs_from_its_file(tmp_path):
    result = {"results": [{"model": "A", "paper": 70.04, "paper_std": 1.26, "probe": 71.0, "probe_std": 0.0,
                           "loss_over_chance": 0.5, "runs": [{"seed": 1, "paper": {"top1": 70.04},
                                                              "probe": {"top1": 71.0}}]}]}
    header = ["row", "paper protocol", "normalised probe", "loss / chance", "seed 1"]
    check_rows(result, header, [["A", "70.0 ± 1.3", "71.0 ± 0.0", "0.50", "70.0 / 71.0"]], "ok")
    for bad in (["A", "70.1 ± 1.3", "71.0 ± 0.0", "0.50", "70.0 / 71.0"],
                ["A", "70.0 ± 1.3", "71.0 ± 0.0", "0.50", "70.0 / 71.1"], ["B", "70.0", "71.0", "-", "-"]):
        with pytest.raises(AssertionError):
            check_rows(result, header, [bad], "bad")
    page = tmp_path / "page.md"
    page.write_text("text\n\n| row | paper protocol |\n|---|---|\n| A | 70.0 ± 1.3 |\n")
    [(mark, _, rows)] = tables(str(page))
    assert mark is None and accuracies(["row", "paper protocol"], rows)  # unmarked: the test above refuses it
