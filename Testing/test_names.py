"""Names a lab really has, through every verb: a workspace under a folder with spaces and
non-ASCII letters (a Windows user name), scans named in several scripts, two names that differ
only in a letter outside ASCII, and a case id of the longest allowed length."""

from __future__ import annotations

import json
import shutil

import SimpleITK as sitk

from assft.workspace.assembly import MAX_CASE_ID_LENGTH
from assft_testing import run_cli, run_cli_in_process

FAST = {"iterations": 2, "semi_iterations": 2, "views": 1, "tau_c": 0.0}


def test_non_ascii_and_long_names_through_every_verb(tmp_path, synthetic_pool, tiny_preset_file):
    data, cases = synthetic_pool
    home = tmp_path / "Dr. Müller-Łukasiewicz 影像"
    images, truth = home / "Scans (für Ärzte)", home / "Wahrheit"
    images.mkdir(parents=True)
    truth.mkdir()
    long_name = "L" * MAX_CASE_ID_LENGTH
    names = ["Müller", "Mäller", "Þóra", "患者一", long_name]
    for name, case in zip(names, cases, strict=False):
        shutil.copy(case.image, images / f"{name}.nii.gz")
    ws = home / "Arbeitsbereich ü"
    created = run_cli(
        "init",
        str(ws),
        "--images",
        str(images),
        "--model",
        str(tiny_preset_file),
        "--label-names",
        "1:Schale,2:Kern ü",
        "--json",
        check=True,
    )
    assert json.loads(created.stdout)["counts"]["unlabeled"] == 5
    status = json.loads(run_cli_in_process("status", str(ws), "--json", check=True).stdout)
    assert status["counts"]["unlabeled"] == 5
    from assft.workspace import Workspace

    workspace = Workspace.open(ws)
    ids = sorted(row["case_id"] for row in workspace.registry.cases())
    # Every id is a safe ASCII file name; the two that differ only in ü / ä are told apart.
    assert ids == sorted(["M_ller", "M_ller_2", "ra", "case", long_name]), ids
    by_name = {Workspace.open(ws).image_path(i).name[: -len(".nii.gz")]: i for i in ids}
    assert set(by_name) == set(names)

    ranked = json.loads(
        run_cli_in_process(
            "rank",
            str(ws),
            "--budget",
            "2",
            "--views",
            "1",
            "--device",
            "cpu",
            "--json",
            check=True,
        ).stdout
    )
    assert len(ranked["selected"]) == 2
    nxt = json.loads(run_cli_in_process("next", str(ws), "--json", check=True).stdout)
    assert nxt["case"] in ids
    # Label files named in any script, submitted by each case id.
    for name, case in zip(names, cases, strict=False):
        label = truth / f"{name} Label.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(case.label)), str(label))
        run_cli_in_process("submit", str(ws), by_name[name], str(label), check=True)
    run_cli_in_process("skip", str(ws), by_name["Þóra"], check=True)
    run_cli_in_process("hold-out", str(ws), by_name[long_name], check=True)
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    tuned = json.loads(
        run_cli(
            "finetune", str(ws), "--config", str(config), "--device", "cpu", "--json", check=True
        ).stdout
    )
    assert tuned["version"] == "v1"
    models = json.loads(run_cli_in_process("models", str(ws), "--json", check=True).stdout)
    assert [m["version"] for m in models["versions"]][:2] == ["v0", "v1"]
    out = home / "Vorhersagen é"
    predicted = run_cli_in_process(
        "predict",
        str(ws),
        "--all",
        "--out",
        str(out),
        "--views",
        "1",
        "--device",
        "cpu",
        check=True,
    )
    assert predicted.returncode == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in ids)
    graded = home / "Wahrheit nach Fall"
    graded.mkdir()
    for name in names:
        shutil.copy(truth / f"{name} Label.nii.gz", graded / f"{by_name[name]}.nii.gz")
    evaluated = json.loads(
        run_cli_in_process(
            "evaluate",
            str(ws),
            "--truth",
            str(graded),
            "--views",
            "1",
            "--device",
            "cpu",
            "--json",
            check=True,
        ).stdout
    )
    assert len(evaluated["cases"]) == 5
    exported = home / "Bündel ü"
    run_cli_in_process("export", str(ws), "v1", "--out", str(exported), check=True)
    assert (exported / "configs" / "metadata.json").is_file()
    run_cli_in_process("rollback", str(ws), "v0", check=True)
    # A case id typed with the letters the file had is not an id: one line, exit 2.
    refused = run_cli_in_process("skip", str(ws), "Müller")
    assert refused.returncode == 2 and "not a valid case id" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    jobs = json.loads(run_cli_in_process("jobs", str(ws), "--json", check=True).stdout)
    assert [j["state"] for j in jobs["jobs"]] == ["done"]
