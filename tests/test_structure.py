"""The engine's layers look down only: an import graph of finetune/ that counts imports inside functions
has no circle, and no module imports another module's `_private` name (a package's own common.py
excepted). bench/import_graph.py prints the graph's circles and private imports."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from import_graph import circles, graph  # noqa: E402


def test_no_import_circles_counting_lazy_imports():
    edges, _ = graph()
    assert "finetune.runs" in edges and "finetune.jobs" in edges["finetune.cli"] | set().union(*edges.values())
    assert circles(edges) == []


def test_no_private_names_across_modules():
    _, private = graph()
    assert private == [], "\n".join(f"{m} imports {n} from {t}" for m, t, n in private)


def test_the_graph_sees_an_import_inside_a_function(tmp_path):
    # The detector itself must catch a lazy circle: runs.py imports evaluate inside a function.
    edges, _ = graph()
    assert "finetune.snapshot" in edges["finetune.runs"]  # runs.create_run's lazy import is an edge
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
