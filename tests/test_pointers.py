"""No stale pointer: every file path the docs and configs name exists, every "README (Section)" or "README: Section"
(there and in the code's messages) is a heading of the README, every "docs/x.md §N" a numbered section of x.md,
and no process talk ("the previous round", "issue 23") sits in the README or docs."""
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "weights/README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT))]
CONFIGS = sorted(glob.glob("config/**/*.yaml", root_dir=ROOT, recursive=True))
CODE = sorted(p for folder in ("main.py", "feeder", "net", "processor", "torchlight", "tools")
              for p in ([folder] if folder.endswith(".py") else glob.glob(f"{folder}/**/*.py", root_dir=ROOT,
                                                                            recursive=True))
              if "/build/" not in p)  # pip's build copy of torchlight is not the project's code
# A path of this repository: a top-level folder of it, then name characters, ending in a name character.
PATH = re.compile(r"(?<![\w./~-])((?:docs|config|net|feeder|processor|torchlight|tools|tests|weights|resource)"
                  r"/[\w./+-]*\w)")
SECTION = re.compile(r"README(?: \(([^)`]+)\)|: ([A-Z][^)\"'`;,]*[\w?]))")
PARAGRAPH = re.compile(r"docs/(\w+)\.md,? §(\d+[a-z]?(?:\.\d+)?)")
PROCESS_TALK = re.compile(r"previous round|last round|issue \d+|Fixes of", re.I)


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def headings(path):
    return [line.lstrip("#").strip() for line in read(path).splitlines() if line.startswith("#")]


@pytest.mark.parametrize("path", DOCS + CONFIGS)
def test_every_file_path_named_exists(path):
    missing = [p for p in PATH.findall(read(path)) if not glob.glob(os.path.join(ROOT, p))]
    assert missing == [], f"{path} names {missing}"


@pytest.mark.parametrize("path", DOCS + CONFIGS + CODE)
def test_every_readme_section_named_exists(path):
    sections = set(headings("README.md"))
    named = [a or b for a, b in SECTION.findall(read(path))]
    assert [s for s in named if s.strip() not in sections] == [], f"{path}: README has {sorted(sections)}"


@pytest.mark.parametrize("path", DOCS + CONFIGS + CODE)
def test_every_numbered_paragraph_named_exists(path):
    for doc, number in PARAGRAPH.findall(read(path)):
        titles = headings(f"docs/{doc}.md")
        assert any(re.match(rf"{re.escape(number)}[.\s]", title + " ") for title in titles), \
            f"{path} names docs/{doc}.md §{number}"


@pytest.mark.parametrize("path", ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT))])
def test_no_process_talk(path):
    if path == "docs/experiments.md":  # the experiment log: its history is its content
        pytest.skip("an experiment log")
    assert PROCESS_TALK.findall(read(path)) == []


def test_the_scanner_sees_stale_pointers(tmp_path):
    """The patterns catch what the issue found: a deleted file, a section the README lost."""
    assert PATH.findall("`net/st_gcn_reference.py`: the original") == ["net/st_gcn_reference.py"]
    assert [a or b for a, b in SECTION.findall("(README: Is pretraining learning?) and README (Beyond NTU).")] == \
        ["Is pretraining learning?", "Beyond NTU"]
    assert PARAGRAPH.findall("docs/method.md §1.3 step 5") == [("method", "1.3")]
    assert not glob.glob(os.path.join(ROOT, "net/st_gcn_reference.py"))
    assert "Beyond NTU" not in headings("README.md")
