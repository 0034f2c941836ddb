"""The margin ``assft demo`` prints beside its own run is the one the benchmark measured: the
package's ``measured_margins.json`` agrees with the committed label-efficiency documents.

Regenerate it after a benchmark run (from the repository's root) with::

    python -c "import pathlib, assft.apps.selection_stats as s;
               s.write_measured_margins(pathlib.Path.cwd())"
"""

from __future__ import annotations

import json
from pathlib import Path

from assft.apps.demo import MARGINS_FILE, QUICK, measured_margin
from assft.apps.selection_stats import MARGIN_SOURCES, measured_margins
from assft.models.resources import resources_dir

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_margins_are_the_benchmarks_own():
    shipped = json.loads((resources_dir() / MARGINS_FILE).read_text(encoding="utf-8"))
    assert sorted(shipped) == sorted(MARGIN_SOURCES)
    for site, source in MARGIN_SOURCES.items():
        document = json.loads((REPO / source).read_text(encoding="utf-8"))
        assert document["setup"]["site"] == site
        assert shipped[site] == measured_margins(document, source)


def test_the_demo_finds_a_margin_for_its_own_site_and_budget():
    entry = measured_margin(QUICK["site"], QUICK["budget"])
    assert entry is not None
    assert entry["seeds"] >= 3 and entry["ci95"] > 0
    assert measured_margin(QUICK["site"], 999) is None
