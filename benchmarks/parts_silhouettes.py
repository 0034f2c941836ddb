"""Diagnostic: how well each sample site's pool splits into parts, for every k.

For each site, the pretrained model's acquisition descriptors a0 of the benchmark's pool (the 30
scans that are not test scans) are split by k-means for k = 2 .. 6, as
:func:`assft.metrics.clustering.choose_parts` does, and the mean silhouette of each split is
printed with the acquisitions (``stratum`` in the sample data's manifest) each part holds. It is
the evidence behind the rule that picks k (``SEPARATED`` and ``choose_parts``).

    assft sample-data --sites t2,lowfield,flair,hospital,multicentre --n-source 0 --seed 11 DATA
    python benchmarks/parts_silhouettes.py DATA
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from assft.apps.simulation import Dataset
from assft.metrics.clustering import kmeans, silhouette
from assft.query.config import QueryConfig
from assft.query.scoring import PoolScorer
from assft.workspace.creation import create_workspace

SITES = ("t2", "lowfield", "flair", "hospital", "multicentre")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="an 'assft sample-data' folder")
    parser.add_argument("--sites", default=",".join(SITES))
    parser.add_argument("--save", type=Path, help="write each site's descriptors here (npz)")
    args = parser.parse_args()
    manifest = json.loads((args.data / "manifest.json").read_text())
    strata = {c["case"]: c.get("stratum") or c.get("site") for c in manifest["cases"]}
    for site in args.sites.split(","):
        dataset = Dataset.from_sample_data(args.data, site=site)
        with tempfile.TemporaryDirectory() as scratch:
            workspace = create_workspace(
                Path(scratch) / "ws", [c.image for c in dataset.pool], model="demo"
            )
            scorer = PoolScorer(workspace, QueryConfig(budget=1, views=2), "cpu")
            rows = workspace.registry.cases()
            descriptors = np.stack(
                [
                    scorer.pretrained_only(r["case_id"], workspace.image_path(r["case_id"])).a0
                    for r in rows
                ]
            ).astype(np.float64)
            ids = [r["case_id"] for r in rows]
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.save / f"{site}.npz",
                descriptors=descriptors,
                ids=np.array(ids),
                strata=np.array([str(strata[i]) for i in ids]),
            )
        for k in range(2, 7):
            clusters = kmeans(descriptors, k, seed=0)
            parts = [
                dict(Counter(strata[ids[i]] for i in np.flatnonzero(clusters.labels == p)))
                for p in range(k)
            ]
            score = silhouette(descriptors, clusters.labels)
            print(json.dumps({"site": site, "k": k, "silhouette": round(score, 3), "parts": parts}))


if __name__ == "__main__":
    main()
