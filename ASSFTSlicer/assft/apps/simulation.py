"""Simulated annotation rounds: select with a strategy, label from the ground truth, fine-tune,
and measure Dice on held-out test scans. Shared by ``assft demo`` and
``assft bench label-efficiency``.

The pool is scored once with the pretrained model (every strategy ranks the same scores), and
each run fine-tunes a copy of one base workspace, so runs differ only in what they select and how
they fine-tune.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from assft.apps.sites import MIXED, TEST_EVERY, site_folder
from assft.errors import BadInputError
from assft.io.image_names import IMAGE_SUFFIXES, case_id_from_path, image_suffix
from assft.io.imaging import is_dicom_series, read_header, read_image, read_label
from assft.io.voxel_grids import VoxelGrid, geometry_mismatch
from assft.metrics import dice_scores, mean_dice, prototype_knowledge_gap, rank_normalise
from assft.metrics.overlap import mean_per_structure
from assft.predict import Predictor
from assft.query.config import QueryConfig, Strategy
from assft.query.parts import propose_held_out
from assft.query.ranking import rank_scored_pool, rank_workspace
from assft.query.scoring import score_pool
from assft.runtime.progress import Progress
from assft.training import FinetuneConfig
from assft.training.finetune import run_finetune
from assft.workspace.creation import create_workspace
from assft.workspace.labels import check_label_values
from assft.workspace.workspace import Workspace

# The demo model fine-tunes on patches and batches as in its pretraining (assft pretrain-demo):
# a 64^3 window covers a whole case, so 32^3 patches keep each step cheap on a CPU. The rest of
# the recipe is FinetuneConfig's defaults (measured in BENCHMARKS.md, "Fine-tuning that pays off").
SMALL_MODEL_FINETUNE: dict[str, Any] = {
    "patch_size": [32, 32, 32],
    "batch_size": 4,
}


def fine_tunes_on_small_patches(model: str) -> bool:
    """Whether a model's network is the demo's (architecture and arguments), which fine-tunes
    with :data:`SMALL_MODEL_FINETUNE` (the foundation encoder is pretrained on 32^3 patches too)."""
    from assft.models.presets import get_preset

    preset, demo = get_preset(model), get_preset("demo")
    return preset.architecture == demo.architecture and preset.arguments == demo.arguments


@dataclass
class Case:
    """A scan and its ground truth."""

    case_id: str
    image: Path
    truth: Path


@dataclass
class Dataset:
    """A pool to annotate and test scans that are never trained on."""

    pool: list[Case]
    test: list[Case]

    @classmethod
    def from_sample_data(cls, root: Path, *, site: str = MIXED, test_every: int = 4) -> Dataset:
        """A target site of ``assft sample-data`` (default: the mixed pool, ``target/``).

        Every ``test_every``-th case is a test scan, the others form the pool.
        """
        folder = site_folder(root, site)
        images = sorted((folder / "images").glob("*.nii.gz"))
        if not images:
            raise BadInputError(f"holds no scans of site {site}: run assft sample-data", folder)
        cases = [Case(p.name[: -len(".nii.gz")], p, folder / "labels" / p.name) for p in images]
        return cls.split(cases, test_every=test_every)

    @classmethod
    def split(cls, cases: list[Case], *, test_every: int = TEST_EVERY) -> Dataset:
        """Every ``test_every``-th case (in the order given) is a test scan, the others the pool."""
        test = [c for i, c in enumerate(cases) if i % test_every == test_every - 1]
        pool = [c for c in cases if c not in test]
        return cls(pool=pool, test=test)

    @classmethod
    def from_folders(
        cls,
        images: Path,
        labels: Path,
        *,
        test_every: int = 4,
        label_names: dict[int, str] | None = None,
    ) -> Dataset:
        """A lab's own labeled scans: every image of ``images`` with its label in ``labels``.

        Images are the image files of ``images`` (NIfTI, NRRD, MetaImage) and its DICOM series
        subfolders. A label belongs to the image of the same case id: the file name without its
        image extension (``sub-01.nii.gz`` and ``sub-01.nrrd`` are one case). In the case ids'
        sorted order every ``test_every``-th case is a test scan, the others form the pool (the
        rule of :meth:`from_sample_data`).

        Each label's size, spacing, origin and direction must be its image's (read from the
        headers where the format allows). With ``label_names``, each label is read and may hold
        only 0 and those values.

        Raises:
            BadInputError: one line naming the file or folder: a missing or empty folder, two
                files of one case id, an image without a label or a label without an image, a
                label whose grid differs from its image's, undeclared label values, fewer cases
                than a pool and a test set need, ``test_every`` below 2.
        """
        if test_every < 2:
            raise BadInputError(
                f"test_every must be 2 or more (every test_every-th case is a test scan; "
                f"{test_every} leaves no pool), got {test_every}"
            )
        if Path(images).expanduser().resolve() == Path(labels).expanduser().resolve():
            raise BadInputError(
                "is given as both the images and the labels folder: keep the labels in a folder "
                "of their own, named like the images",
                images,
            )
        image_files = _case_files(Path(images), "images")
        label_files = _case_files(Path(labels), "labels")
        rule = "labels are matched to images by file name, without the image extension"
        for case_id, image in image_files.items():
            if case_id not in label_files:
                more = len(set(image_files) - set(label_files)) - 1
                raise BadInputError(
                    f"has no label in {labels} ({rule}: expected {case_id}.nii.gz, .nrrd, "
                    f".mha...)" + (f"; {more} other image(s) have none either" if more else ""),
                    image,
                )
        for case_id, label in label_files.items():
            if case_id not in image_files:
                more = len(set(label_files) - set(image_files)) - 1
                raise BadInputError(
                    f"matches no image in {images} ({rule}: case id {case_id!r})"
                    + (f"; {more} other label(s) match none either" if more else ""),
                    label,
                )
        ids = sorted(image_files)
        if len(ids) < test_every:
            raise BadInputError(
                f"holds {len(ids)} labeled case(s); at least {test_every} are needed for a pool "
                f"and a test set (every {_ordinal(test_every)} case is a test scan: "
                f"{test_every} cases give {test_every - 1} pool scan(s) and 1 test scan)",
                images,
            )
        cases = [Case(i, image_files[i], label_files[i]) for i in ids]
        for case in cases:
            _check_label_fits(case.truth, case.image)
            if label_names is not None:
                check_label_values(read_label(case.truth), label_names, case.truth)
        return cls.split(cases, test_every=test_every)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _case_files(folder: Path, what: str) -> dict[str, Path]:
    """``{case id: path}`` of the image files and DICOM series subfolders of ``folder``."""
    folder = folder.expanduser()
    if not folder.exists():
        raise BadInputError(f"does not exist (the folder of {what})", folder)
    if not folder.is_dir():
        raise BadInputError(f"is not a folder (the folder of {what} is needed)", folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not (path.is_file() and image_suffix(path)) and not (
            path.is_dir() and is_dicom_series(path)
        ):
            continue
        case_id = case_id_from_path(path)
        if case_id in found:
            raise BadInputError(
                f"gives case id {case_id!r}, like {found[case_id].name}: two {what} of one case "
                "(the case id is the file name without its image extension)",
                path,
            )
        found[case_id] = path.resolve()
    if not found:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise BadInputError(f"holds no {what} ({kinds} files or DICOM series folders)", folder)
    return found


def _grid(path: Path, *, label: bool) -> VoxelGrid:
    """The voxel grid of an image from its header alone where the format allows, else read."""
    header = read_header(path)  # None: the full read below names the problem in one line
    if header is not None:
        return header
    return read_label(path) if label else read_image(path)


def _check_label_fits(label: Path, image: Path) -> None:
    """Refuse a label whose size, spacing, origin or direction differ from its image's."""
    label_grid, image_grid = _grid(label, label=True), _grid(image, label=False)
    mismatch = geometry_mismatch(label_grid, image_grid)
    if mismatch is None:
        return
    sizes = tuple(label_grid.GetSize()), tuple(image_grid.GetSize())
    if not mismatch.startswith("size"):
        mismatch += f" (sizes: label {sizes[0]}, image {sizes[1]})"
    raise BadInputError(f"does not fit its image {image}: {mismatch}", label)


@dataclass
class RunResult:
    """One selection + fine-tune + test evaluation."""

    strategy: str
    mode: str
    budget: int
    seed: int
    selected: list[str]
    test_dice: float
    test_per_structure: dict[str, float]
    version: str  # the version the (last) job made
    promoted: bool
    seconds: float
    variant: str = ""
    reliable: list[str] = field(default_factory=list)
    test_per_case: dict[str, float] = field(default_factory=dict)
    pool_dice: float | None = None
    pool_dice_pretrained: float | None = None
    validation_dice: float | None = None
    parent_validation_dice: float | None = None
    best_checkpoint: dict[str, Any] | None = None
    steps: dict[str, int] | None = None
    held_out: list[str] = field(default_factory=list)
    learning_curve: dict[str, Any] | None = None
    tested_version: str = ""
    """The version the test figures are of: the current one after the last round (the parent,
    where the gate refused the last version)."""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    """Each round: its picks, the version its job made, whether the gate promoted it, and the
    held-out Dice of that version and of its parent (the fields above are the last round's)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dice_on_test_scans(
    workspace: Workspace, version: str, cases: list[Case], *, device: str, views: int
) -> dict[str, Any]:
    """Dice per structure of a model version on test scans outside the workspace."""
    predictor = Predictor(workspace, version=version, device=device, views=views)
    values = workspace.config.label_values
    names = workspace.config.label_names
    per_case = []
    for case in cases:
        label, _ = predictor.predict_image(read_image(case.image))
        scores = dice_scores(
            sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(read_label(case.truth)), values
        )
        per_case.append(scores)
    per_structure = {names[v]: d for v, d in mean_per_structure(per_case, values).items()}
    return {
        "mean_dice": mean_dice({i: v for i, v in enumerate(per_structure.values())}),
        "per_structure": per_structure,
        "by_case": {case.case_id: mean_dice(s) for case, s in zip(cases, per_case, strict=True)},
    }


VALIDATION_CASES = 2
"""Scans of the pool a simulated lab labels once as its validation set (held out)."""


class Simulation:
    """A base workspace over the pool, scored once; runs fine-tune copies of it.

    ``label_names`` (``{value: name}``) default to the model preset's.
    """

    def __init__(
        self,
        out: Path,
        dataset: Dataset,
        *,
        model: str = "demo",
        label_names: dict[int, str] | None = None,
        device: str = "auto",
        views: int = 4,
        held_out: int = VALIDATION_CASES,
        epistemic: bool = True,
        transductive: bool = True,
        progress: Progress | None = None,
    ) -> None:
        """``epistemic``: also run the MC-dropout passes (the `epistemic` strategy needs them);
        ``transductive``: each run also measures Dice on the pool's scans nobody labeled."""
        self.out = out
        self.transductive = transductive
        self.dataset = dataset
        self.device = device
        self.views = views
        self.progress = progress or Progress("none")
        self.truth = {c.case_id: c.truth for c in dataset.pool}
        base = out / "base"
        if base.exists():
            shutil.rmtree(base)
        self.base = create_workspace(
            base, [c.image for c in dataset.pool], model=model, label_names=label_names
        )
        started = time.perf_counter()
        self.scored = score_pool(
            self.base,
            QueryConfig(budget=1, views=views),
            device=device,
            progress=self.progress,
            epistemic=epistemic,
        )
        self.scoring_seconds = time.perf_counter() - started
        # The validation set a lab labels once, before its first round, as the product proposes
        # it (assft hold-out --propose): scans that cover the parts of the pool, held out of
        # training and of every selection (the promotion gate and the best checkpoint read
        # them).
        self.parts = self.scored.parts()
        if held_out >= len(dataset.pool):
            raise BadInputError(
                f"a validation set of {held_out} scans leaves none of the pool's "
                f"{len(dataset.pool)} to select"
            )
        self.held_out = sorted(propose_held_out(self.parts, held_out))
        for case_id in self.held_out:
            self.base.submit_label(case_id, self.truth[case_id], user="simulated-clinician")
        if self.held_out:
            self.base.hold_out(self.held_out)
            self.scored.hold_out(self.held_out)
            # The pretrained model's Dice on them: the evidence a ranking reads (as assft rank
            # measures it on a lab's held-out scans).
            held = [c for c in dataset.pool if c.case_id in self.held_out]
            measured = dice_on_test_scans(self.base, "v0", held, device=device, views=1)
            self.scored.evidence = {c: d for c, d in measured["by_case"].items() if np.isfinite(d)}
        self.stats = self.scored.statistics()
        self._pretrained: dict[str, Any] | None = None
        self._pretrained_pool: dict[str, float] | None = None

    @property
    def unlabeled_pool(self) -> list[Case]:
        """The pool's scans a run may select (the validation set is not among them)."""
        return [c for c in self.dataset.pool if c.case_id not in self.held_out]

    def pretrained_pool_dice(self) -> dict[str, float]:
        """The pretrained model's Dice on each selectable pool scan (computed once)."""
        if self._pretrained_pool is None:
            self._pretrained_pool = dice_on_test_scans(
                self.base, "v0", self.unlabeled_pool, device=self.device, views=self.views
            )["by_case"]
        return self._pretrained_pool

    def pretrained_test_dice(self) -> dict[str, Any]:
        """The pretrained model's Dice on the test scans (computed once)."""
        if self._pretrained is None:
            self._pretrained = dice_on_test_scans(
                self.base, "v0", self.dataset.test, device=self.device, views=self.views
            )
        return self._pretrained

    def signals(self) -> dict[str, list[float]]:
        """Each per-case signal of the scored pool, in the order of ``scored.scores``: DKD's
        knowledge gap by each estimator, ASD, ATTSQ's combined score S, the whole-volume
        entropy and MC-dropout entropy (where scored)."""
        scores = self.scored.scores
        stats = self.stats
        out: dict[str, list[float]] = {
            "knowledge gap (bn)": [s.kg_bn for s in scores],
        }
        if stats.asd0 is not None:
            gap, _ = prototype_knowledge_gap(stats.z0, stats.asd0)
            out["knowledge gap (prototype)"] = [float(v) for v in gap]
        out["ASD"] = [s.asd for s in scores]
        attsq = self.ranking(QueryConfig(strategy=Strategy("attsq"), budget=1, views=self.views))
        by_case = {row["case"]: row["score"] for row in attsq["cases"]}
        out["ATTSQ score S"] = [by_case[s.case_id] for s in scores]
        out["mean entropy"] = [s.mean_entropy for s in scores]
        out["epistemic (MC dropout)"] = [s.epistemic for s in scores]
        return {
            name: [float(v) for v in values]
            for name, values in out.items()
            if np.all(np.isfinite(np.asarray(values, dtype=float)))
        }

    def signals_against_failure(self) -> dict[str, float]:
        """How well each per-case signal of the scored pool finds the cases the pretrained model
        fails on: Spearman's rho between the signal and 1 - Dice on the pool (1: perfectly)."""
        pool = dice_on_test_scans(
            self.base, "v0", self.dataset.pool, device=self.device, views=self.views
        )["by_case"]
        failure = np.array([1.0 - pool[s.case_id] for s in self.scored.scores])
        return {
            name: spearman(np.asarray(values, dtype=float), failure)
            for name, values in self.signals().items()
        }

    def signals_against_gains(self, gains: dict[str, float]) -> dict[str, float]:
        """Spearman's rho between each signal and each case's marginal gain when labeled alone
        (``gains``: case -> test Dice gain over the pretrained model), over the cases measured."""
        ids = [s.case_id for s in self.scored.scores]
        measured = [i for i, case in enumerate(ids) if case in gains]
        if len(measured) < 3:
            return {}
        gain = np.array([gains[ids[i]] for i in measured])
        return {
            name: spearman(np.asarray(values, dtype=float)[measured], gain)
            for name, values in self.signals().items()
        }

    def ranking(self, config: QueryConfig) -> dict[str, Any]:
        """The ranking document of a strategy over the pool (no forward pass)."""
        return rank_scored_pool(
            self.scored, config, label_names=self.base.config.label_names, stats=self.stats
        )

    def run(
        self,
        query: QueryConfig,
        finetune: dict[str, Any],
        *,
        variant: str = "",
        keep: bool = False,
        rounds: int = 1,
        picks: list[str] | None = None,
    ) -> RunResult:
        """Select with ``query``, label the picks from the ground truth, fine-tune; ``rounds``
        times, as a lab iterates (from the second round on, the pool is ranked again with the
        current model); then test the current model: the one the lab would use, which a refused
        version is not. ``picks`` replaces the first round's selection (one case labeled alone
        measures its marginal gain)."""
        if rounds < 1:
            raise BadInputError(f"rounds must be 1 or more, got {rounds}")
        started = time.perf_counter()
        document = self.ranking(query)
        if picks is not None:
            document = {**document, "selected": list(picks)}
        mode = finetune.get("mode", "selective")
        name = f"{query.strategy.value}-{mode}-b{query.budget}-s{query.seed}{variant}"
        folder = self.out / "runs" / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(self.base.root, folder, ignore=shutil.ignore_patterns("rankings", "jobs"))
        (folder / "jobs").mkdir(exist_ok=True)
        (folder / "rankings").mkdir(exist_ok=True)
        workspace = Workspace.open(folder)
        config = FinetuneConfig.from_dict({"seed": query.seed, "views": self.views, **finetune})
        history: list[dict[str, Any]] = []
        selected: list[str] = []
        for round_index in range(rounds):
            if round_index:  # ranked again with the current model, as `assft rank` does
                document = rank_workspace(workspace, query, device=self.device, save=False)
            workspace.save_ranking(document)  # as a lab's ranking is (the gate reads its parts)
            for case_id in document["selected"]:
                workspace.submit_label(case_id, self.truth[case_id], user="simulated-clinician")
            selected += document["selected"]
            manifest = run_finetune(workspace, config, device=self.device)
            metrics = manifest.get("metrics") or {}
            history.append(
                {
                    "selected": document["selected"],
                    "version": manifest["version"],
                    "promoted": bool(manifest.get("promoted")),
                    "validation_dice": metrics.get("validation_dice"),
                    "parent_validation_dice": metrics.get("parent_validation_dice"),
                }
            )
        current = workspace.current_model_version()
        tested = dice_on_test_scans(
            workspace, current, self.dataset.test, device=self.device, views=self.views
        )
        # Transductive: the pool's scans nobody labeled, which the lab wants segmented.
        rest = (
            [c for c in self.unlabeled_pool if c.case_id not in selected]
            if self.transductive
            else []
        )
        pool = (
            dice_on_test_scans(workspace, current, rest, device=self.device, views=self.views)[
                "by_case"
            ]
            if rest
            else {}
        )
        before = self.pretrained_pool_dice()
        metrics = manifest.get("metrics") or {}
        result = RunResult(
            strategy=query.strategy.value,
            mode=config.mode.value,
            budget=query.budget,
            seed=query.seed,
            selected=selected,
            test_dice=tested["mean_dice"],
            test_per_structure=tested["per_structure"],
            version=manifest["version"],
            promoted=bool(manifest.get("promoted")),
            seconds=time.perf_counter() - started,
            variant=variant,
            reliable=list(manifest.get("ssft", {}).get("reliable", [])),
            test_per_case=tested["by_case"],
            pool_dice=float(np.mean(list(pool.values()))) if pool else None,
            pool_dice_pretrained=float(np.mean([before[c] for c in pool])) if pool else None,
            validation_dice=metrics.get("validation_dice"),
            parent_validation_dice=metrics.get("parent_validation_dice"),
            best_checkpoint=metrics.get("best_checkpoint"),
            steps=manifest.get("schedule"),
            held_out=list(self.held_out),
            learning_curve=manifest.get("learning_curve"),
            tested_version=current,
            rounds=history if rounds > 1 else [],
        )
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on the average ranks (``rank_normalise``)."""
    ra, rb = rank_normalise(a), rank_normalise(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def append_result(path: Path, result: RunResult) -> None:
    """Add a run to a JSON-lines results file (runs survive an interrupted benchmark)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(result.to_dict()) + "\n")


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
