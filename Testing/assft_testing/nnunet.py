"""A small nnU-Net v2 results folder made by nnU-Net itself, for the tests.

Six synthetic scans (a shell around a core, 36 x 40 x 32 voxels of 4 mm: the axes differ, so that
an axis order mixed up shows) become an nnU-Net raw dataset; nnU-Net's own API extracts its
fingerprint, plans it (the network, spacing and patch size come from nnU-Net's planner) and
preprocesses it, and nnU-Net's own ``nnUNetTrainer`` trains fold 0 for one short epoch and writes
its checkpoints, plans.json and dataset.json as it does for a lab. About 30 s on 2 CPU cores. nnU-
Net's paths are environment variables read at import, so everything nnU-Net runs here runs in child
processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

NNUNET_VENV = Path(__file__).resolve().parents[2] / ".venv-nnunet"
"""The venv that holds all of nnU-Net (``make setup``)."""

DATASET = "Dataset001_Spheres"
CONFIGURATION = "3d_fullres"
LABELS = {"background": 0, "shell": 1, "core": 2}

_BUILD = """
import json, os, sys
from pathlib import Path
import torch
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints, plan_experiments, preprocess)
extract_fingerprints([1], num_processes=1)
plan_experiments([1])
preprocess([1], configurations=(sys.argv[3],), num_processes=(1,))
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
os.environ["nnUNet_n_proc_DA"] = "0"  # no augmentation workers: batches made in this process
pre = Path(sys.argv[1]) / "pre" / sys.argv[2]
plans = json.loads((pre / "nnUNetPlans.json").read_text())
dataset = json.loads((pre / "dataset.json").read_text())
plans["continue_training"] = False  # what nnUNetv2_train adds before it builds the trainer
torch.manual_seed(0)
trainer = nnUNetTrainer(plans, sys.argv[3], 0, dataset, device=torch.device("cpu"))
trainer.num_epochs = 1
trainer.num_iterations_per_epoch = 12
trainer.num_val_iterations_per_epoch = 2
trainer.run_training()
"""


def nnunet_python() -> Path:
    """The Python of :data:`NNUNET_VENV` (the tests that need it skip, saying why, without it)."""
    for candidate in (NNUNET_VENV / "bin" / "python", NNUNET_VENV / "Scripts" / "python.exe"):
        if candidate.is_file():
            return candidate
    pytest.skip(f"nnU-Net's own planner and predictor need {NNUNET_VENV} (make setup makes it)")


PREBUILT = Path(__file__).resolve().parents[2] / ".cache" / "nnunet-test-model"
"""Where ``make setup`` builds the model once (``python Testing/assft_testing/nnunet.py``)."""


def prebuilt_nnunet_model() -> Path | None:
    """The results folder ``make setup`` built, when it is complete."""
    folder = PREBUILT / "results" / DATASET / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
    return folder if (folder / "fold_0" / "checkpoint_final.pth").is_file() else None


def write_raw_dataset(raw: Path, cases: int = 6, seed: int = 0) -> Path:
    """nnU-Net's raw layout: imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json."""
    folder = raw / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:32, :40, :36]
    for index in range(cases):
        centre = np.array([16, 20, 18]) + rng.integers(-3, 4, 3)
        radius = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        label = np.zeros(radius.shape, np.uint8)
        label[radius < 12] = 1
        label[radius < 7] = 2
        image = (100 + 50 * label + rng.normal(0, 10, radius.shape)).astype(np.float32)
        for array, path in (
            (image, folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz"),
            (label, folder / "labelsTr" / f"case_{index:03d}.nii.gz"),
        ):
            written = sitk.GetImageFromArray(array)
            written.SetSpacing((4.0, 4.0, 4.0))
            sitk.WriteImage(written, str(path))
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": LABELS,
                "numTraining": cases,
                "file_ending": ".nii.gz",
            }
        )
    )
    return folder


def build_nnunet_model(root: Path) -> Path:
    """The results folder made by nnU-Net's own planner and trainer (see the module's notes):
    ``root/results/Dataset001_Spheres/nnUNetTrainer__nnUNetPlans__3d_fullres``."""
    write_raw_dataset(root / "raw")
    env = {
        **os.environ,
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "pre"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_compile": "f",
    }
    # nnU-Net's own fingerprint extraction, planner, preprocessing and trainer, in one process.
    subprocess.run(
        [str(nnunet_python()), "-c", _BUILD, str(root), DATASET, CONFIGURATION],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root / "results" / DATASET / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"


_PREDICT = """
import json, sys
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
model, folds, images, names, mirroring = json.loads(sys.argv[1])
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                            device=torch.device("cpu"), verbose=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(model, use_folds=tuple(folds),
                                               checkpoint_name="checkpoint_final.pth")
predictor.predict_from_files_sequential([[i] for i in images], names, save_probabilities=False)
"""


def nnunet_predict(
    model_folder: Path,
    images: list[Path],
    out: Path,
    folds: tuple[int, ...] = (0,),
    *,
    mirroring: bool = False,
) -> list[Path]:
    """nnU-Net's own ``nnUNetPredictor`` on ``images`` (``folds``; with ``mirroring``, its
    test-time mirroring; no worker processes), in nnU-Net's venv; returns the label files it
    wrote, in order."""
    out.mkdir(parents=True, exist_ok=True)
    names = [out / image.name.replace("_0000.nii.gz", "") for image in images]
    arguments = [
        str(model_folder),
        list(folds),
        [str(i) for i in images],
        [str(n) for n in names],
        mirroring,
    ]
    subprocess.run(
        [str(nnunet_python()), "-c", _PREDICT, json.dumps(arguments)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return [n.with_name(n.name + ".nii.gz") for n in names]


if __name__ == "__main__":  # make setup: build the tests' model once
    import shutil

    if prebuilt_nnunet_model() is None:
        shutil.rmtree(PREBUILT, ignore_errors=True)
        print(build_nnunet_model(PREBUILT))
