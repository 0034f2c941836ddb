"""The module's Logic: everything behind the panel, without Qt, so it runs (and is tested) with
the MRML of the ``slicer-core`` wheel.

Heavy work (creating a workspace, ranking, prediction, fine-tuning) runs as
``PythonSlicer -m assft ...`` processes read without blocking the GUI (:mod:`.process`); light
work (opening a workspace, submitting a label, listing jobs and model versions) calls the engine
directly. ``ASSFTSlicer.ASSFTSlicerLogic`` adds the module's parameter node to this class.
"""

import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import slicer

# Standard library only: the module loads before the engine's dependencies are installed.
from assft.runtime.job_state import STARTING, JobState
from assft.runtime.progress import ProgressEvent
from ASSFTSlicerLib import dependencies
from ASSFTSlicerLib.i18n import tr as _
from ASSFTSlicerLib.process import (
    BackgroundProcess,
    ProcessResult,
    engineEnvironment,
    processIsAlive,
    pythonExecutable,
)
from ASSFTSlicerLib.scene import (
    CaseNodes,
    LabelDefinition,
    OverlapPolicy,
    UnsubmittedEditsError,
    createCaseSegmentation,
    imageFromVolumeNode,
    loadCaseVolume,
    loadLabelArray,
    loadUncertaintyVolume,
    removeCaseNodes,
    segmentationDigest,
    setForegroundVolume,
    submitSegmentation,
)
from ASSFTSlicerLib.tasks import TaskKind, Tasks, TaskStart
from ASSFTSlicerLib.worklist import (
    MODEL_COLUMNS,
    WORKLIST_COLUMNS,
    LearningCurveNodes,
    fillTableNode,
    modelRows,
    updateLearningCurveChart,
    updateScoreChart,
    worklistRows,
)

MODULE_DIR = pathlib.Path(__file__).resolve().parent.parent
"""The module's folder: the engine package ``assft`` lies next to the module file."""

JOB_STARTING = STARTING
"""The state :meth:`WorkspaceLogic.detachedJobStatus` reports while a launched fine-tuning process
has not created its job yet (:data:`assft.runtime.job_state.STARTING`)."""


def freshFolderName(wanted: pathlib.Path) -> pathlib.Path:
    """``wanted``, or ``wanted-2``, ``wanted-3``... : the first name nothing holds."""
    candidate, number = wanted, 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = wanted.with_name(f"{wanted.name}-{number}")
    return candidate


class WorkspaceLogic:
    """The work behind the panel; runs without the GUI (and without Qt).

    Args:
        python: The interpreter for engine processes (default: PythonSlicer in Slicer).
        launcher: How processes are read (see :class:`ASSFTSlicerLib.process.BackgroundProcess`).
    """

    def __init__(self, python: str | None = None, launcher: str = "auto") -> None:
        self.python = python
        self.launcher = launcher
        self.engineRoot = MODULE_DIR
        self.caseNodes: CaseNodes | None = None
        self.caseWorkspace: pathlib.Path | None = None
        self.jobWorkspace: pathlib.Path | None = None
        """The workspace of the fine-tuning job the panel follows, whatever folder the field
        names meanwhile (see :meth:`followRunningJob`)."""
        self._savedDigest: str | None = None
        """What the loaded case's segmentation drew when it was loaded, last submitted, or its
        edits were discarded (None: unknown, as for a case taken over from a saved scene)."""
        self.tasks = Tasks()
        self.lastWorkspaceOffered = False
        """The foreground task (create, rank, predict), what waits for it, and the fine-tuning
        job's launch or cancel command (see :mod:`ASSFTSlicerLib.tasks`)."""

    # workspace ---------------------------------------------------------------------------

    @staticmethod
    def folderPath(value) -> pathlib.Path | None:
        """The folder a path field names, or None when it is empty."""
        text = "" if value is None else str(value).strip()
        return None if text in ("", ".") else pathlib.Path(text).expanduser()

    @staticmethod
    def isFolder(value) -> bool:
        path = WorkspaceLogic.folderPath(value)
        return path is not None and path.is_dir()

    @staticmethod
    def hasWorkspace(value) -> bool:
        """Whether ``value`` is a folder holding a workspace."""
        path = WorkspaceLogic.folderPath(value)
        return path is not None and (path / "assft.json").is_file()

    @staticmethod
    def pathFieldText(value, shownText: str = "") -> str | None:
        """The text a folder field should show for a path parameter, or None to leave what it
        shows (the user's own spelling of the same folder, e.g. with a trailing separator, is
        not rewritten while they type).

        An unset path (``pathlib.Path()``, which prints as ".") shows as an empty field.
        """
        wanted = WorkspaceLogic.folderPath(value)
        if wanted == WorkspaceLogic.folderPath(shownText):
            return None
        return "" if wanted is None else str(value).strip()

    @staticmethod
    def pathFromFieldText(text: str) -> pathlib.Path:
        """The path parameter for a folder field's text (empty: ``pathlib.Path()``)."""
        return pathlib.Path(text.strip()) if text and text.strip() else pathlib.Path()

    def workspaceToRestore(self, fieldValue, lastWorkspace) -> pathlib.Path | None:
        """The last used workspace, to fill the folder field when the module is first shown.

        Offered once per session and only into an empty field: a folder the user has typed (a
        new workspace to create from volumes they leave the module to load) is never replaced.
        """
        if self.lastWorkspaceOffered:
            return None
        self.lastWorkspaceOffered = True
        if self.folderPath(fieldValue) is not None or not self.hasWorkspace(lastWorkspace):
            return None
        return self.folderPath(lastWorkspace)

    @staticmethod
    def summaryIsFor(summary: dict[str, Any] | None, workspacePath) -> bool:
        """Whether a :meth:`workspaceSummary` is of the workspace the folder field names (the
        panel's buttons act on the field's folder, so they follow it, not the last opened)."""
        path = WorkspaceLogic.folderPath(workspacePath)
        if not summary or path is None or "workspace" not in summary:
            return False
        try:
            return pathlib.Path(summary["workspace"]).resolve() == path.resolve()
        except OSError:
            return False

    def openWorkspace(self, workspacePath, reconcile: bool = True):
        """The engine's open :class:`assft.workspace.Workspace` (given one, that one).

        ``reconcile`` False opens it without reconciling labels with the registry: no lock is
        taken and nothing is written (for a view that only looks).

        Raises:
            ValueError: no folder chosen, or not a workspace (the engine's message).
        """
        if hasattr(workspacePath, "registry"):  # already open
            return workspacePath
        path = self.folderPath(workspacePath)
        if path is None:
            raise ValueError(_("Choose a workspace folder first."))
        try:
            from assft.errors import AssftError
            from assft.workspace import Workspace
        except ImportError as error:
            # Say "install" only when a package really is missing: any other import failure
            # (a broken install, an unsupported platform) would be hidden behind the wrong advice.
            missing = dependencies.missingPackages()
            if missing:
                raise ValueError(
                    _(
                        "The ASSFT engine needs {packages}: install the dependencies (Setup)."
                    ).format(packages=", ".join(missing))
                ) from None
            raise ValueError(
                _("The ASSFT engine cannot be loaded: {error}").format(error=error)
            ) from None
        try:
            return Workspace.open(path, reconcile=reconcile)
        except AssftError as error:
            raise ValueError(str(error)) from None

    def workspaceSummary(self, workspacePath) -> dict[str, Any]:
        """Counts per status, model version and preset, labels, latest ranking, running job."""
        workspace = self.openWorkspace(workspacePath)
        summary = workspace.status_summary()
        summary["workspace"] = str(workspace.root)
        summary["model"] = workspace.config.model
        summary["labels"] = [
            {"value": label.value, "name": label.name} for label in workspace.config.labels
        ]
        summary["model_has_head"] = self.modelHasHead(workspace)
        return summary

    def modelHasHead(self, workspacePath) -> bool | None:
        """Whether the current model segments the workspace's labels (False: an encoder without
        a head, such as ``foundation-demo``, before its first fine-tune: its prediction would be
        noise); None when the engine's packages are missing or the pointer is damaged."""
        if dependencies.missingPackages():
            return None
        from assft.errors import AssftError
        from assft.workspace.model_versions import ModelVersions

        try:
            return ModelVersions(self.openWorkspace(workspacePath, reconcile=False)).has_head()
        except AssftError:
            return None

    @staticmethod
    def describeHead(hasHead: bool | None) -> str:
        """A sentence when the current model has no segmentation head yet; "" otherwise."""
        if hasHead is not False:
            return ""
        return _(
            "The model has no segmentation head for these labels yet: cases open empty, to be "
            "labeled from scratch; the first fine-tune trains one"
        )

    def workspaceMark(self, workspacePath) -> str:
        """What the worklist and versions tables show, in short: it changes when anyone (this
        program, the command line, Slicer elsewhere) labels, ranks, fine-tunes or rolls back in
        the workspace, so a view can refresh only then. It takes no lock and writes nothing
        (not even the brief probe of :meth:`Workspace.running_job`, nor a reconcile): a view
        polling it must never make a job that starts at that instant find the workspace busy."""
        from assft.errors import AssftError

        workspace = self.openWorkspace(workspacePath, reconcile=False)
        registry = workspace.registry
        try:
            version = workspace.current_model_version()
        except AssftError:  # a damaged pointer: the versions table says why
            version = None
        latest = registry.latest_ranking()

        def names(folder: pathlib.Path) -> list[str]:
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

        return json.dumps(
            [
                version,
                registry.counts(),
                latest and latest["file_name"],
                names(workspace.models_dir),  # a new version, or a writer's partial folder
                names(workspace.jobs_dir),  # a job started or ended elsewhere
            ],
            sort_keys=True,
        )

    def launchProblem(self, result: ProcessResult) -> str:
        """Why a detached fine-tuning launch started no job to follow ("" when it did)."""
        if not result.ok:
            return self.describeResult(result)
        if not self.launchedJob(result).get("pid"):
            return _("Fine-tuning was launched but did not say its process id: see 'assft jobs'.")
        return ""

    @staticmethod
    def describeCounts(counts: dict[str, int]) -> str:
        """``"1 labeled, 3 unlabeled"``: the cases per status."""
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))

    @staticmethod
    def describeCorrection(labeled: list[str], names: list[str]) -> str:
        """What the clinician corrects when the workspace labels only some structures
        (``assft structures``); "" when every structure is labeled."""
        others = [name for name in names if name not in labeled]
        if not labeled or not others:
            return ""
        return _("Correct {labeled} only: {others} stay as the model predicts them").format(
            labeled=", ".join(labeled), others=", ".join(others)
        )

    @staticmethod
    def describeWorkspace(summary: dict[str, Any]) -> str:
        counts = WorkspaceLogic.describeCounts(summary.get("counts", {}))
        model = pathlib.Path(str(summary.get("model", ""))).stem or summary.get("model", "")
        names = [label["name"] for label in summary.get("labels", [])]
        text = _("{total} cases ({counts}); labels: {labels}; model {model} {version}").format(
            total=summary.get("total", 0),
            counts=counts or _("none"),
            labels=", ".join(names),
            model=model,
            version=summary.get("model_version", ""),
        )
        correction = WorkspaceLogic.describeCorrection(
            list(summary.get("labeled_structures") or names), names
        )
        ranking = WorkspaceLogic.describeRankingModel(summary)
        head = WorkspaceLogic.describeHead(summary.get("model_has_head"))
        notes = [note for note in (head, correction, ranking) if note]
        return ". ".join([text, *notes])

    @staticmethod
    def describeRankingModel(summary: dict[str, Any]) -> str:
        """A sentence when the worklist's ranking was made with another model version than the
        current one (a rollback, or a promotion not ranked again yet); "" otherwise."""
        made, current = summary.get("latest_ranking_model"), summary.get("model_version")
        if not summary.get("latest_ranking") or not made or not current or made == current:
            return ""
        return _(
            "The worklist was ranked with model {made}; the current model is {current}: "
            "rank again to follow it."
        ).format(made=made, current=current)

    # model presets -----------------------------------------------------------------------

    def modelPresets(self) -> list[dict[str, Any]]:
        """The presets of the engine's ``assft/resources/Models.json``, read as data (the engine's
        preset module is not imported: the list shows before the dependencies are installed)."""
        try:
            presetsFile = self.engineRoot / "assft" / "resources" / "Models.json"
            document = json.loads(presetsFile.read_text(encoding="utf-8"))
            presets = [p for p in document.get("presets", []) if p.get("name")]
        except (OSError, ValueError, TypeError, AttributeError) as error:
            logging.warning("cannot read the model presets: %s", error)
            presets = []
        return presets or [{"name": "demo", "checkpoint": {"source": "shipped"}}]

    @staticmethod
    def downloadedWeightsFolder() -> pathlib.Path:
        """Where downloaded weights are placed: ``assft.models.checkpoints.downloads_dir`` (that
        module loads torch, so its rule is repeated here; a test checks that both agree)."""
        override = os.environ.get("ASSFT_MODELS_DIR")
        if override:
            return pathlib.Path(override).expanduser()
        return pathlib.Path.home() / ".cache" / "assft" / "models"

    def presetNeeds(self, preset: dict[str, Any]) -> str:
        """What a preset needs before it runs, from its checkpoint source ("" when nothing)."""
        checkpoint = preset.get("checkpoint") or {}
        source = checkpoint.get("source")
        if source == "url":
            url = str(checkpoint.get("url") or "")
            name = url.rstrip("/").rsplit("/", 1)[-1] or f"{preset.get('name')}.pt"
            return "" if (self.downloadedWeightsFolder() / name).is_file() else _("needs download")
        if source == "path":
            path = pathlib.Path(str(checkpoint.get("path") or ""))
            return "" if path.is_file() else _("needs a weights file")
        if source == "package":
            package = str(checkpoint.get("package") or "")
            try:
                importlib.metadata.distribution(package)
            except (importlib.metadata.PackageNotFoundError, ValueError):
                return _("needs the {package} package").format(package=package)
        return ""

    def presetLabel(self, preset: dict[str, Any]) -> str:
        """A preset's name as the model list shows it, with what it still needs."""
        needs = self.presetNeeds(preset)
        return f"{preset['name']} ({needs})" if needs else str(preset["name"])

    # engine processes --------------------------------------------------------------------

    def engineCommand(self, verb: str, *arguments) -> list[str]:
        """``[python, "-m", "assft", verb, ...]``."""
        return [
            self.python or pythonExecutable(),
            "-m",
            "assft",
            verb,
            *[str(a) for a in arguments],
        ]

    def startEngineProcess(
        self,
        verb: str,
        arguments: list,
        name: str = "",
        onProgress: Callable | None = None,
        onLog: Callable | None = None,
        onFinished: Callable | None = None,
    ) -> BackgroundProcess:
        """Start ``assft VERB ARGUMENTS`` in the background and return it at once."""
        process = BackgroundProcess(
            self.engineCommand(verb, *arguments),
            name=name or verb,
            environment=engineEnvironment(self.engineRoot),
            onProgress=onProgress,
            onLog=onLog or (lambda line: logging.info("[assft %s] %s", verb, line)),
            onFinished=onFinished,
            launcher=self.launcher,
        )
        return process.start()

    def startCreateWorkspace(
        self,
        workspacePath,
        images: list,
        modelPreset: str,
        labelNames: str | None = None,
        labeledStructures: str | None = None,
        **callbacks,
    ) -> BackgroundProcess:
        """Create a workspace (``assft init``: the model is loaded once to check it fits).

        ``labeledStructures``: the structures clinicians will label when they label only some
        of the model's (names or values, comma-separated); empty: all of them.
        """
        path = self.folderPath(workspacePath)
        if path is None:
            raise ValueError(_("Choose a folder for the new workspace."))
        if self.hasWorkspace(path):
            raise ValueError(
                _("{path} already holds a workspace: open it instead.").format(path=path)
            )
        sources = [self.folderPath(item) for item in images]
        if not sources or any(s is None or not s.exists() for s in sources):
            raise ValueError(_("Choose an existing folder of scans."))
        if not labelNames:
            labelNames, labeledStructures = self.labelsForModel(modelPreset, labeledStructures)
        arguments = [path, "--images", *sources, "--model", modelPreset]
        if labelNames:
            arguments += ["--label-names", labelNames]
        if labeledStructures and labeledStructures.strip():
            arguments += ["--labeled-structures", labeledStructures.strip()]
        return self.startEngineProcess("init", arguments, _("creating the workspace"), **callbacks)

    def labelsForModel(self, model: str, structures: str | None) -> tuple[str | None, str | None]:
        """``(labelNames, labeledStructures)`` of a new workspace. A model with structures of
        its own keeps them (``labelNames`` None; ``structures``: those the lab labels). A model
        without any (an encoder such as ``foundation-demo``) segments the structures the field
        names: they become the workspace's labels, each labeled.

        Raises:
            ValueError: a model without structures, and none named.
        """
        if dependencies.missingPackages():
            return None, structures  # the engine's init says what is missing
        from assft.errors import AssftError
        from assft.models import get_preset

        try:
            own = get_preset(model).label_names
        except AssftError:
            return None, structures  # the engine's init names the problem
        if own:
            return None, structures
        names = [name.strip() for name in (structures or "").split(",") if name.strip()]
        if not names:
            raise ValueError(
                _(
                    "{model} has no structures of its own (an encoder): name the structures "
                    "you will label, comma-separated, in the structures field."
                ).format(model=model)
            )
        return ",".join(f"{value}:{name}" for value, name in enumerate(names, start=1)), None

    MODEL_PREFIXES = ("nnunet:", "bundle:")
    """How a model of the lab's own is named on the engine's command line (``--model``)."""

    def modelForNewWorkspace(self, modelPreset: str, ownModel: str = "") -> str:
        """The ``--model`` of a new workspace: the lab's own model when the field names one
        (``nnunet:FOLDER``, ``bundle:FOLDER``, a preset ``.json`` file, or a folder recognised
        by its files: ``plans.json`` is nnU-Net's, ``configs/metadata.json`` a MONAI bundle's),
        else the chosen preset.

        Raises:
            ValueError: the field names nothing the engine opens (the message says why).
        """
        text = (ownModel or "").strip()
        if not text:
            return modelPreset
        prefix = next((p for p in self.MODEL_PREFIXES if text.startswith(p)), "")
        path = pathlib.Path(text[len(prefix) :]).expanduser()
        if not prefix and path.is_dir():
            if (path / "plans.json").is_file():
                prefix = "nnunet:"
            elif (path / "configs" / "metadata.json").is_file():
                prefix = "bundle:"
            else:
                raise ValueError(
                    _(
                        "{path} is neither an nnU-Net results folder (plans.json) nor a MONAI "
                        "bundle (configs/metadata.json)."
                    ).format(path=path)
                )
        if prefix:
            if not path.is_dir():
                raise ValueError(_("{path} is not a folder.").format(path=path))
            return prefix + str(path.resolve())
        if path.suffix.lower() == ".json" and path.is_file():
            return str(path.resolve())
        raise ValueError(
            _(
                "{text} is not a model: give nnunet:FOLDER, bundle:FOLDER or a preset .json file."
            ).format(text=text)
        )

    def startDescribeModel(self, model: str, **callbacks) -> BackgroundProcess:
        """Open a model as a new workspace would (``assft model-info --json``): the network, its
        structures, its folds; :meth:`modelInfoText` says it in a line."""
        return self.startEngineProcess(
            "model-info", [model, "--json"], _("checking the model"), **callbacks
        )

    @staticmethod
    def modelInfoText(info: dict[str, Any]) -> str:
        """What ``assft model-info`` found, as the panel shows it."""
        structures = ", ".join(str(name) for name in (info.get("structures") or {}).values())
        parts = [
            _("{architecture} network").format(architecture=info.get("architecture", "?")),
            _("structures: {structures}").format(structures=structures or _("none")),
        ]
        used = [str(f) for f in info.get("used") or []]
        if len(used) > 1:
            parts.append(_("an ensemble of folds {folds}").format(folds=", ".join(used)))
        elif used:
            parts.append(_("fold {fold}").format(fold=used[0]))
        if not info.get("pretrained", True):
            parts.append(_("no pretrained weights"))
        return "; ".join(parts) + "."

    @staticmethod
    def isScanForNewWorkspace(node) -> bool:
        """Whether a loaded volume can become a case of a new workspace: a scalar image that is
        not a label map, and not a workspace's own (a case's scan or uncertainty map, shown
        by this panel)."""
        image = None if node is None else node.GetImageData()
        return (
            image is not None
            and not node.IsA("vtkMRMLLabelMapVolumeNode")
            and not node.IsA("vtkMRMLVectorVolumeNode")  # RGB, DWI, vector fields
            and image.GetNumberOfScalarComponents() == 1
            and not node.GetAttribute("ASSFT.Case")
            and node.GetAttribute("ASSFT.Role") != "uncertainty"
        )

    def writeVolumesForWorkspace(self, volumeNodes, folder) -> list[pathlib.Path]:
        """Write loaded volumes as NIfTI files (their exact grids) for a new workspace; the
        volumes that cannot be cases (:meth:`isScanForNewWorkspace`) are left out."""
        from assft.io.image_names import case_id_from_path
        from assft.io.imaging import write_image_atomic

        folder = pathlib.Path(folder)
        written = []
        for node in volumeNodes:
            if not self.isScanForNewWorkspace(node):
                continue
            name = case_id_from_path(f"{node.GetName()}.nii.gz")
            target = folder / f"{name}.nii.gz"
            number = 1
            while target.exists():
                number += 1
                target = folder / f"{name}_{number}.nii.gz"
            written.append(pathlib.Path(write_image_atomic(imageFromVolumeNode(node), target)))
        if not written:
            raise ValueError(_("No scalar volumes are loaded."))
        return written

    def startCreateWorkspaceFromVolumes(
        self, workspacePath, volumeNodes, modelPreset: str, **callbacks
    ) -> BackgroundProcess:
        """Create a workspace from the loaded volumes, written next to it in a folder of their
        own made for this try (``<workspace>-scans``, else ``-scans-2``...: a folder left by an
        earlier try is never added to). The folder appears whole or not at all, and goes again
        when the workspace is not created (a failed or cancelled ``init``)."""
        path = self.folderPath(workspacePath)
        if path is None:
            raise ValueError(_("Choose a folder for the new workspace."))
        if self.hasWorkspace(path):
            raise ValueError(
                _("{path} already holds a workspace: open it instead.").format(path=path)
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}-scans-", dir=path.parent))
        try:
            self.writeVolumesForWorkspace(volumeNodes, staging)
            scans = freshFolderName(path.parent / f"{path.name}-scans")
            staging.rename(scans)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        onFinished = callbacks.pop("onFinished", None)

        def finished(result: ProcessResult) -> None:
            if not self.hasWorkspace(path):  # nothing refers to the scans: they go
                shutil.rmtree(scans, ignore_errors=True)
            if onFinished is not None:
                onFinished(result)

        try:
            return self.startCreateWorkspace(
                path, [scans], modelPreset, onFinished=finished, **callbacks
            )
        except BaseException:
            shutil.rmtree(scans, ignore_errors=True)
            raise

    def startRank(
        self,
        workspacePath,
        budget: int,
        strategy: str | None = None,
        device: str = "auto",
        views: int | None = None,
        **callbacks,
    ) -> BackgroundProcess:
        """Rank the unlabeled cases in the background (``assft rank --progress json``).

        A strategy or view count left as None is the engine's (the workspace's settings, else
        QueryConfig's default).
        """
        workspace = self.openWorkspace(workspacePath)
        unlabeled = workspace.status_summary()["counts"].get("unlabeled", 0)
        if unlabeled == 0:
            raise ValueError(_("No unlabeled cases are left to rank."))
        arguments = [
            workspace.root,
            "--budget",
            min(int(budget), unlabeled),
            "--device",
            device,
            "--progress",
            "json",
        ]
        if strategy:
            arguments += ["--strategy", strategy]
        if views:
            arguments += ["--views", views]
        return self.startEngineProcess("rank", arguments, _("ranking"), **callbacks)

    def predictionDir(self, workspace) -> pathlib.Path:
        return workspace.root / "predictions" / workspace.current_model_version()

    def predictionFiles(
        self, workspacePath, caseId: str
    ) -> tuple[pathlib.Path | None, pathlib.Path | None]:
        """The current model version's predicted label and uncertainty map of a case, if made."""
        workspace = self.openWorkspace(workspacePath)
        folder = self.predictionDir(workspace)
        label, uncertainty = folder / f"{caseId}.nii.gz", folder / f"{caseId}_uncertainty.nii.gz"
        return (label if label.is_file() else None, uncertainty if uncertainty.is_file() else None)

    def startPredict(
        self,
        workspacePath,
        caseId: str | None,
        device: str = "auto",
        views: int | None = None,
        **callbacks,
    ) -> BackgroundProcess:
        """Predict one case (or every case when ``caseId`` is None) with its uncertainty map."""
        workspace = self.openWorkspace(workspacePath)
        if caseId is not None:
            workspace.check_case_id(caseId)
        version = workspace.current_model_version()
        arguments = [
            workspace.root,
            *([caseId] if caseId else ["--all"]),
            "--out",
            self.predictionDir(workspace),
            "--version",
            version,
            "--uncertainty",
            "--device",
            device,
            "--progress",
            "json",
        ]
        if views:
            arguments += ["--views", views]
        return self.startEngineProcess("predict", arguments, _("predicting"), **callbacks)

    @staticmethod
    def describeProgress(event: dict[str, Any]) -> str:
        """One line for a progress event: phase, count, metrics, ETA (of the whole job where
        the event gives it: ``job_eta_s``)."""
        if event.get("event") == ProgressEvent.DONE:
            return _("Done.")
        if event.get("event") == ProgressEvent.ERROR:
            return str(event.get("message", _("Failed.")))
        if event.get("event") != ProgressEvent.PROGRESS:
            return str(event.get("event", ""))
        parts = [f"{event.get('phase', '')} {event.get('done', 0)}/{event.get('total', '?')}"]
        if event.get("case"):
            parts.append(str(event["case"]))
        for key, title in (("loss", _("loss")), ("validation_dice", _("held-out Dice"))):
            if isinstance(event.get(key), (int, float)):
                parts.append(f"{title} {event[key]:.3f}")
        text = ", ".join(parts)
        # A fine-tune's whole job (both stages) when it says so, else the phase's own.
        eta = event.get("job_eta_s", event.get("eta_s"))
        if isinstance(eta, (int, float)):
            text += (
                _(", about {minutes} min left").format(minutes=max(1, round(eta / 60)))
                if eta >= 90
                else _(", about {seconds} s left").format(seconds=round(eta))
            )
        return text

    @staticmethod
    def describeResult(result: ProcessResult) -> str:
        if result.cancelled:
            return _("Cancelled.")
        if result.ok:
            return _("Done in {seconds:.0f} s.").format(seconds=result.seconds)
        return _("Failed: {message}").format(message=result.errorMessage)

    # tasks: one foreground task at a time -------------------------------------------------

    def runCreateWorkspace(
        self,
        workspacePath,
        images: list,
        modelPreset: str,
        onProgress=None,
        onFinished=None,
        labeledStructures: str | None = None,
    ) -> BackgroundProcess:
        """:meth:`startCreateWorkspace` as the foreground task.

        Raises:
            ValueError: another task runs, or the arguments are refused.
        """
        return self.tasks.run(
            TaskKind.CREATE,
            lambda done: self.startCreateWorkspace(
                workspacePath,
                images,
                modelPreset,
                labeledStructures=labeledStructures,
                onProgress=onProgress,
                onFinished=done,
            ),
            onFinished,
            _("Creating the workspace..."),
        )

    def runCreateWorkspaceFromVolumes(
        self,
        workspacePath,
        volumeNodes,
        modelPreset: str,
        onProgress=None,
        onFinished=None,
        labeledStructures: str | None = None,
    ) -> BackgroundProcess:
        """:meth:`startCreateWorkspaceFromVolumes` as the foreground task."""
        return self.tasks.run(
            TaskKind.CREATE_FROM_VOLUMES,
            lambda done: self.startCreateWorkspaceFromVolumes(
                workspacePath,
                volumeNodes,
                modelPreset,
                labeledStructures=labeledStructures,
                onProgress=onProgress,
                onFinished=done,
            ),
            onFinished,
            _("Creating the workspace..."),
        )

    def runRank(
        self,
        workspacePath,
        budget: int,
        strategy: str | None = None,
        device: str = "auto",
        onProgress=None,
        onFinished=None,
    ) -> BackgroundProcess:
        """:meth:`startRank` as the foreground task (the Rank button).

        Raises:
            ValueError: another task runs, or nothing is left to rank.
        """
        return self.tasks.run(
            TaskKind.RANK,
            lambda done: self.startRank(
                workspacePath, budget, strategy, device, onProgress=onProgress, onFinished=done
            ),
            onFinished,
            _("Ranking..."),
        )

    def rankWhenFree(
        self,
        workspacePath,
        budget: int,
        strategy: str | None = None,
        device: str = "auto",
        onProgress=None,
        onFinished=None,
    ) -> TaskStart:
        """Rank now, or when the running task ends (the ranking after a promotion): a running
        prediction is never cancelled for it.

        Raises:
            ValueError: nothing is left to rank (checked now; when the ranking was deferred, a
                refusal at its start goes to ``tasks.onDeferredError``).
        """
        self.openWorkspace(workspacePath)
        return self.tasks.runWhenFree(
            TaskKind.RANK,
            lambda done: self.startRank(
                workspacePath, budget, strategy, device, onProgress=onProgress, onFinished=done
            ),
            onFinished,
        )

    def needsPrediction(self, workspacePath, caseId: str) -> bool:
        """Whether the case has no prediction of the current model yet and one can be made (a
        model without a segmentation head makes none: the case opens empty)."""
        return (
            self.predictionFiles(workspacePath, caseId)[0] is None
            and not dependencies.missingPackages()
            and self.modelHasHead(workspacePath) is not False
        )

    def prepareCase(
        self,
        workspacePath,
        caseId: str,
        onReady: Callable[[str], None],
        device: str = "auto",
        onProgress=None,
        onPredicted=None,
    ) -> BackgroundProcess | None:
        """Get a case ready to load ("Label next", a worklist row): when the current model has
        no prediction of it, predict it in the background first (the foreground task).

        ``onReady(caseId)`` runs when the case can be loaded: at once when nothing is missing
        (None is returned), else after the prediction, unless it was cancelled (a failed
        prediction still loads the case, from its label or empty). ``onPredicted(result)`` hears
        how the prediction ended first (the caller's status line).

        Raises:
            ValueError: an unknown case id, or another task runs.
        """
        workspace = self.openWorkspace(workspacePath)
        workspace.check_case_id(caseId)
        if not self.needsPrediction(workspace.root, caseId):
            onReady(caseId)
            return None

        def predicted(result: ProcessResult) -> None:
            if onPredicted is not None:
                onPredicted(result)
            if not result.cancelled:
                onReady(caseId)

        return self.runPredict(
            workspace.root, caseId, device, onProgress=onProgress, onFinished=predicted
        )

    def runPredict(
        self, workspacePath, caseId: str, device: str = "auto", onProgress=None, onFinished=None
    ) -> BackgroundProcess:
        """:meth:`startPredict` of one case as the foreground task ("Label next")."""
        return self.tasks.run(
            TaskKind.PREDICT,
            lambda done: self.startPredict(
                workspacePath, caseId, device, onProgress=onProgress, onFinished=done
            ),
            onFinished,
            _("Predicting {case}...").format(case=caseId),
        )

    def cancelTask(self) -> bool:
        """Cancel the foreground task (never the fine-tuning job); returns whether one ran."""
        return self.tasks.cancel()

    def launchFinetune(
        self,
        workspacePath,
        mode: str | None = None,
        iterations: int | None = None,
        device: str = "auto",
        onFinished=None,
        config: dict[str, Any] | None = None,
    ) -> BackgroundProcess:
        """:meth:`startFinetune` as the job's command, apart from the foreground task; the job
        is then the one followed (:attr:`jobWorkspace`)."""
        self.jobWorkspace = self.openWorkspace(workspacePath).root
        return self.tasks.runJobCommand(
            lambda done: self.startFinetune(
                workspacePath, mode, iterations, device, config, onFinished=done
            ),
            onFinished,
        )

    def followRunningJob(self, workspacePath) -> bool:
        """Follow the fine-tuning job running in a workspace (one started before Slicer was
        opened, or by another program); whether one runs there."""
        if self.runningFinetuneJob(workspacePath) is None:
            return False
        self.jobWorkspace = self.openWorkspace(workspacePath).root
        return True

    def followedJobStatus(self, launched: dict[str, Any]) -> dict[str, Any]:
        """:meth:`detachedJobStatus` of the job followed, in its own workspace; ``failed`` with
        the reason when it cannot be read (the workspace moved or was deleted)."""

        if self.jobWorkspace is None:
            return {"state": JobState.FAILED, "message": _("no fine-tuning job is followed")}
        try:
            return self.detachedJobStatus(self.jobWorkspace, launched)
        except Exception as error:  # noqa: BLE001 - said once, instead of a traceback each poll
            return {
                "state": JobState.FAILED,
                "message": _("cannot read the job in {path}: {error}").format(
                    path=self.jobWorkspace, error=error
                ),
            }

    def isJobWorkspace(self, workspacePath) -> bool:
        """Whether ``workspacePath`` names the workspace of the job followed."""
        path = self.folderPath(workspacePath)
        return (
            self.jobWorkspace is not None
            and path is not None
            and path.resolve() == self.jobWorkspace.resolve()
        )

    def cancelFollowedJob(self, onFinished=None) -> BackgroundProcess | None:
        """:meth:`cancelFinetuneJob` of the job followed, in its own workspace."""
        if self.jobWorkspace is None:
            return None
        return self.cancelFinetuneJob(self.jobWorkspace, onFinished=onFinished)

    def cancelFinetuneJob(self, workspacePath, onFinished=None) -> BackgroundProcess | None:
        """Cancel the running fine-tuning job (``assft cancel``) without touching the foreground
        task; None when no job runs."""
        job = self.runningFinetuneJob(workspacePath)
        if job is None:
            return None
        return self.tasks.runJobCommand(
            lambda done: self.startCancelJob(workspacePath, job["id"], onFinished=done),
            onFinished,
        )

    def shutdown(self, grace: float = 5.0) -> list[BackgroundProcess]:
        """Stop a running ranking, prediction or creation before returning (Slicer closes), so
        no engine process is left holding the workspace lock; a detached fine-tuning job goes
        on. See :meth:`ASSFTSlicerLib.tasks.Tasks.shutdown`."""
        return self.tasks.shutdown(grace)

    # worklist ----------------------------------------------------------------------------

    def updateWorklist(self, workspacePath, tableNode=None, seriesNode=None, chartNode=None):
        """Fill the worklist table from the latest ranking and the chart from the table.

        Returns:
            ``(table node, plot series node, plot chart node)``.
        """
        tableNode = fillTableNode(
            tableNode or self._namedNode("vtkMRMLTableNode", "ASSFT worklist"),
            WORKLIST_COLUMNS,
            self.worklist(workspacePath),
        )
        seriesNode = seriesNode or self._namedNode("vtkMRMLPlotSeriesNode", "ASSFT cases")
        chartNode = chartNode or self._namedNode("vtkMRMLPlotChartNode", "ASSFT ranking")
        return (tableNode, *updateScoreChart(tableNode, seriesNode, chartNode))

    def worklist(self, workspacePath) -> list[dict[str, Any]]:
        """The worklist's rows (:func:`ASSFTSlicerLib.worklist.worklistRows`): the latest
        ranking, best first, with each case's status now (the panel's table, the web page)."""
        workspace = self.openWorkspace(workspacePath)
        statuses = {row["case_id"]: row["status"] for row in workspace.registry.cases()}
        try:
            ranking = workspace.latest_ranking()
        except Exception as error:  # a damaged ranking file must not hide the rest
            logging.warning("cannot read the latest ranking: %s", error)
            ranking = None
        return worklistRows(ranking, statuses)

    def modelVersions(self, workspacePath) -> list[dict[str, Any]]:
        """The model versions' rows (:func:`ASSFTSlicerLib.worklist.modelRows`), newest first."""
        from assft.workspace.model_versions import ModelVersions

        return modelRows(ModelVersions(self.openWorkspace(workspacePath)).to_json())

    @staticmethod
    def _namedNode(className: str, name: str):
        node = slicer.mrmlScene.GetFirstNode(name, className)
        return node if node is not None else slicer.mrmlScene.AddNewNodeByClass(className, name)

    @staticmethod
    def _cell(tableNode, row: int, title: str) -> str:
        if tableNode is None or row < 0 or row >= tableNode.GetNumberOfRows():
            return ""
        column = tableNode.GetColumnIndex(title)
        return tableNode.GetCellText(row, column) if column >= 0 else ""

    def caseAtWorklistRow(self, tableNode, row: int) -> str:
        return self._cell(tableNode, row, "Case")

    def versionAtModelsRow(self, tableNode, row: int) -> str:
        return self._cell(tableNode, row, "Version")

    def nextCase(self, workspacePath) -> str | None:
        """The best-ranked case of the latest ranking that is still unlabeled (None: none left)."""
        from assft.errors import AssftError

        try:
            return self.openWorkspace(workspacePath).next_case()["case"]
        except AssftError as error:
            raise ValueError(str(error)) from None

    # annotating --------------------------------------------------------------------------

    def loadCase(
        self,
        workspacePath,
        caseId: str,
        predictionPath=None,
        uncertaintyPath=None,
        showUncertainty: bool = True,
        discardEdits: bool = False,
    ) -> CaseNodes:
        """Show a case: its scan, a segmentation with one segment per workspace label, pre-filled.

        The segmentation starts from the case's stored label when it has one (to correct it),
        else from ``predictionPath`` or the current model's prediction when there is one, else
        empty. The previous case's nodes are removed; edits of it that were not submitted only
        with ``discardEdits`` (the user said so).

        Raises:
            UnsubmittedEditsError: the loaded case has edits not submitted (see
                :meth:`unsubmittedEdits`) and ``discardEdits`` is False; nothing changed.
        """
        workspace = self.openWorkspace(workspacePath)
        workspace.check_case_id(caseId)
        edited = None if discardEdits else self.unsubmittedEdits()  # no digest when consented
        if edited is not None:
            raise UnsubmittedEditsError(edited)
        predicted, uncertain = self.predictionFiles(workspace.root, caseId)
        stored = workspace.label_path(caseId)
        start = stored or (pathlib.Path(predictionPath) if predictionPath else predicted)
        uncertaintyPath = pathlib.Path(uncertaintyPath) if uncertaintyPath else uncertain
        self.closeCase()
        labels = LabelDefinition.fromWorkspace(workspace.config.labels)
        volume = loadCaseVolume(workspace.image_path(caseId), caseId, workspace.root)
        nodes = CaseNodes(caseId, volume, None)
        try:
            labelArray = loadLabelArray(start, volume, labels) if start else None
            nodes.segmentation = createCaseSegmentation(
                volume, labels, labelArray, name=f"{caseId} segmentation"
            )
            if uncertaintyPath is not None:
                nodes.uncertainty = loadUncertaintyVolume(uncertaintyPath, volume, caseId)
        except BaseException:
            removeCaseNodes(nodes)
            raise
        self.caseNodes, self.caseWorkspace = nodes, workspace.root
        self._savedDigest = self._digest(nodes)
        setForegroundVolume(volume, nodes.uncertainty if showUncertainty else None)
        return nodes

    @staticmethod
    def _digest(nodes: CaseNodes) -> str:
        return segmentationDigest(nodes.segmentation)

    def unsubmittedEdits(self) -> str | None:
        """The loaded case's id when its segmentation draws something else than when it was
        loaded or last submitted (an edit undone is no edit), or when that is not known (a case
        taken over from a saved scene); None when nothing would be lost."""
        nodes = self.loadedCase()
        if nodes is None:
            return None
        if self._savedDigest is None or self._digest(nodes) != self._savedDigest:
            return nodes.caseId
        return None

    def discardEdits(self) -> None:
        """The user chose to lose the loaded case's unsubmitted edits: they no longer stop
        :meth:`loadCase` (edits made after this do)."""
        nodes = self.loadedCase()
        self._savedDigest = None if nodes is None else self._digest(nodes)

    SEGMENT_EDITOR_NODE_TAG = "ASSFTSlicer"
    """Singleton tag of the panel's own segment editor node (the Segment Editor module's is
    "SegmentEditor": the two editors keep their own effect, mask and overwrite settings)."""

    def segmentEditorNode(self):
        """The segment editor parameter node of the panel's embedded editor, made if the scene
        has none (a singleton: a closed scene keeps it, reset)."""
        node = slicer.mrmlScene.GetSingletonNode(
            self.SEGMENT_EDITOR_NODE_TAG, "vtkMRMLSegmentEditorNode"
        )
        if node is None:
            node = slicer.vtkMRMLSegmentEditorNode()
            node.SetSingletonTag(self.SEGMENT_EDITOR_NODE_TAG)
            node.SetName(slicer.mrmlScene.GenerateUniqueName("ASSFT segment editor"))
            node = slicer.mrmlScene.AddNode(node)
        return node

    def setUncertaintyVisible(self, visible: bool, opacity: float = 0.4) -> None:
        if self.caseNodes is not None:
            setForegroundVolume(
                self.caseNodes.volume, self.caseNodes.uncertainty if visible else None, opacity
            )

    def caseWindowLevel(self) -> dict[str, tuple[float, float]]:
        """The window/level presets of the loaded case's scan
        (:func:`ASSFTSlicerLib.window_level.windowLevelPresets`); none when no case is loaded."""
        from ASSFTSlicerLib.window_level import windowLevelPresets

        nodes = self.loadedCase()
        return {} if nodes is None else windowLevelPresets(nodes.volume)

    def setCaseWindowLevel(self, window: float, level: float) -> None:
        """Show the loaded case's scan with this window and level (nothing without a case)."""
        from ASSFTSlicerLib.window_level import setWindowLevel

        nodes = self.loadedCase()
        if nodes is not None:
            setWindowLevel(nodes.volume, window, level)

    def describeCursor(self, sliceNode, x: float, y: float) -> str:
        """The line for pixel ``(x, y)`` of a slice view showing the loaded case
        (:func:`ASSFTSlicerLib.cursor.describePoint`); "" when no case is loaded."""
        from ASSFTSlicerLib.cursor import describePoint, rasAtSlicePixel

        nodes = self.loadedCase()
        if nodes is None or sliceNode is None:
            return ""
        return describePoint(nodes.volume, rasAtSlicePixel(sliceNode, x, y))

    def loadedCase(self) -> CaseNodes | None:
        """The case's nodes while they are still in the scene (a closed scene removed them)."""
        nodes = self.caseNodes
        if nodes is None or any(
            node is None or node.GetScene() is None for node in (nodes.volume, nodes.segmentation)
        ):
            return None
        return nodes

    def restoreCase(
        self, workspacePath, caseId: str, volume, segmentation, uncertainty=None
    ) -> CaseNodes:
        """Take over a case's nodes named by the parameter node (a reloaded scene, or a Slicer
        restarted with a saved scene) so that "Submit and next" works on them.

        Raises:
            ValueError: no case, a node missing from the scene, or nodes of another case or
                workspace; the message says to load the case again.
        """
        if not caseId:
            raise ValueError(_("No case is loaded: use 'Label next' first."))
        again = _("Load case {case} again (Label next or double-click it).").format(case=caseId)
        if volume is None or volume.GetScene() is None:
            raise ValueError(
                _("The scene has no scan of case {case}.").format(case=caseId) + " " + again
            )
        if segmentation is None or segmentation.GetScene() is None:
            raise ValueError(
                _("The scene has no segmentation of case {case}.").format(case=caseId) + " " + again
            )
        workspace = self.openWorkspace(workspacePath)
        for node in (volume, segmentation):
            if node.GetAttribute("ASSFT.Case") != caseId:
                raise ValueError(
                    _("'{node}' is not a node of case {case}.").format(
                        node=node.GetName(), case=caseId
                    )
                    + " "
                    + again
                )
        owner = volume.GetAttribute("ASSFT.Workspace")
        if owner and pathlib.Path(owner).resolve() != workspace.root.resolve():
            raise ValueError(
                _("Case {case} in the scene belongs to another workspace ({path}).").format(
                    case=caseId, path=owner
                )
            )
        self.caseNodes = CaseNodes(caseId, volume, segmentation, uncertainty)
        self.caseWorkspace = workspace.root
        self._savedDigest = None  # saved with the scene: it may hold edits never submitted
        return self.caseNodes

    def followCase(
        self, workspacePath, caseId: str, volume, segmentation, uncertainty=None
    ) -> CaseNodes | None:
        """Make the case the parameter node names (the one the editor shows) the loaded case,
        so that Submit stores what the user edits: after a scene import or reload, the
        parameter node may name other nodes than those loaded before. None when no case is
        named or it is already the loaded one.

        The case loaded before keeps its nodes in the scene (edits included): nothing is removed.

        Raises:
            ValueError: see :meth:`restoreCase`.
        """
        if not caseId:
            return None
        loaded = self.loadedCase()
        if (
            loaded is not None
            and loaded.caseId == caseId
            and segmentation is not None
            and loaded.segmentation.GetID() == segmentation.GetID()
            and loaded.volume.GetID() == (volume.GetID() if volume is not None else None)
        ):
            return None
        return self.restoreCase(workspacePath, caseId, volume, segmentation, uncertainty)

    def closeCase(self) -> None:
        removeCaseNodes(self.caseNodes)
        self.caseNodes = self.caseWorkspace = self._savedDigest = None

    def submitCase(
        self,
        workspacePath,
        overlap: OverlapPolicy | str = OverlapPolicy.REFUSE,
        user: str | None = None,
        caseNodes: CaseNodes | None = None,
    ) -> pathlib.Path:
        """Store the current case's segmentation as its label (exact geometry, validated, atomic).

        Raises:
            ValueError: no case loaded, segments that are not workspace labels, overlapping
                segments (unless ``overlap`` says who wins), or the engine refuses the label.
        """
        nodes = caseNodes or self.loadedCase()
        if nodes is None or nodes.segmentation is None:
            raise ValueError(_("No case is loaded: use 'Label next' first."))
        workspace = self.openWorkspace(workspacePath)
        if (
            self.caseWorkspace is not None
            and caseNodes is None
            and workspace.root != self.caseWorkspace
        ):
            raise ValueError(
                _("The loaded case belongs to another workspace ({path}).").format(
                    path=self.caseWorkspace
                )
            )
        stored = submitSegmentation(
            workspace, nodes.caseId, nodes.segmentation, nodes.volume, overlap=overlap, user=user
        )
        if nodes is self.caseNodes:
            self._savedDigest = self._digest(nodes)
        return stored

    # validation scans ----------------------------------------------------------------------

    def startProposeValidation(
        self, workspacePath, device: str = "auto", **callbacks
    ) -> BackgroundProcess:
        """Propose validation (held-out) scans that cover the archive, one per part, in the
        background (``assft hold-out --propose``); the result's ``done`` event holds them."""
        workspace = self.openWorkspace(workspacePath)
        arguments = [workspace.root, "--propose", "--device", device, "--progress", "json"]
        return self.startEngineProcess(
            "hold-out", arguments, _("proposing validation scans"), **callbacks
        )

    def runProposeValidation(
        self, workspacePath, device: str = "auto", onProgress=None, onFinished=None
    ) -> BackgroundProcess:
        """:meth:`startProposeValidation` as the foreground task.

        Raises:
            ValueError: another task runs.
        """
        return self.tasks.run(
            TaskKind.PROPOSE,
            lambda done: self.startProposeValidation(
                workspacePath, device, onProgress=onProgress, onFinished=done
            ),
            onFinished,
            _("Proposing validation scans..."),
        )

    @staticmethod
    def describeProposal(result: ProcessResult) -> str:
        """The proposal as the clinician reads it, from a finished proposal's ``done`` event."""
        done = result.doneEvent or {}
        rows = done.get("proposed") or []
        if not rows:
            return _("No scan to propose.")
        todo = {"held-out": _("held out already"), "unlabeled": _("label it as validation")}
        text = _("Validation scans that cover the archive ({count} part(s)): ").format(
            count=(done.get("parts") or {}).get("count", "?")
        ) + "; ".join(
            f"{row['case']} ({todo.get(row['status'], row['status'])}, {row['part']})"
            for row in rows
        )
        notes = done.get("notes") or []
        return text + ("".join(f" Note: {n}." for n in notes) if notes else "")

    def holdOutCase(self, workspacePath, caseId: str, release: bool = False) -> None:
        """Keep a labeled case out of training as a validation scan (or release it).

        Raises:
            ValueError: no case, or one that is not labeled (held out, to release).
        """
        from assft.errors import AssftError

        if not caseId:
            raise ValueError(_("No case is selected."))
        try:
            self.openWorkspace(workspacePath).hold_out([caseId], release=release)
        except AssftError as error:
            raise ValueError(str(error)) from None

    def skipCase(self, workspacePath, caseId: str) -> None:
        from assft.errors import AssftError

        if not caseId:
            raise ValueError(_("No case is loaded."))
        try:
            self.openWorkspace(workspacePath).skip(caseId)
        except AssftError as error:
            raise ValueError(str(error)) from None
        if self.caseNodes is not None and self.caseNodes.caseId == caseId:
            self.closeCase()

    # fine-tuning -------------------------------------------------------------------------

    def startFinetune(
        self,
        workspacePath,
        mode: str | None = None,
        iterations: int | None = None,
        device: str = "auto",
        config: dict[str, Any] | None = None,
        **callbacks,
    ) -> BackgroundProcess:
        """Launch a detached fine-tuning job (it survives Slicer; follow it with
        :meth:`detachedJobStatus`).

        Args:
            mode, iterations: None leaves them to the engine (the workspace's settings, else
                FinetuneConfig's defaults).
            config: Extra FinetuneConfig fields (e.g. ``{"views": 1, "semi_iterations": 2}``).
        """
        workspace = self.openWorkspace(workspacePath)
        running = workspace.running_job()  # the lock: the one place that says a job runs
        if running:
            raise ValueError(
                _("A job is already running in this workspace (pid {pid}).").format(
                    pid=running.get("pid")
                )
            )
        if workspace.status_summary()["counts"].get("labeled", 0) == 0:
            raise ValueError(_("Submit at least one label before fine-tuning."))
        arguments = [workspace.root, "--device", device, "--detach", "--json"]
        if mode:
            arguments += ["--mode", mode]
        if iterations:
            arguments += ["--iterations", int(iterations)]
        if config:
            handle = tempfile.NamedTemporaryFile(
                "w", prefix="assft-finetune-", suffix=".json", delete=False
            )
            with handle:
                json.dump(config, handle)
            arguments += ["--config", handle.name]
            onFinished = callbacks.get("onFinished")

            def removeConfigFile(result):  # the detached job got the config on its command line
                pathlib.Path(handle.name).unlink(missing_ok=True)
                if onFinished:
                    onFinished(result)

            callbacks["onFinished"] = removeConfigFile
        return self.startEngineProcess(
            "finetune", arguments, _("starting fine-tuning"), **callbacks
        )

    def longFinetuneQuestion(
        self,
        workspacePath,
        mode: str | None = None,
        iterations: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> str:
        """What to ask before a fine-tune estimated to take more than a few minutes
        (``assft.training.estimate.LONG_FINETUNE_S``), with the same settings
        :meth:`startFinetune` would launch; "" when it is shorter or cannot be told yet (the
        first fine-tune of a workspace is not estimated)."""
        from assft.settings import resolve_config
        from assft.training.config import FinetuneConfig
        from assft.training.estimate import LONG_FINETUNE_S, estimate_finetune

        workspace = self.openWorkspace(workspacePath)
        resolved = resolve_config(
            FinetuneConfig,
            flags={"mode": mode or None, "iterations": int(iterations) if iterations else None},
            config_json=json.dumps(config) if config else None,
            settings=workspace.config.settings,
            settings_file=workspace.config_path,
        )
        estimate = estimate_finetune(workspace, resolved)
        if estimate is None or estimate["seconds"] < LONG_FINETUNE_S:
            return ""
        return _(
            "This fine-tune will take about {minutes} minutes ({steps} steps at the pace of "
            "the fine-tune that made {version}, on this machine). Start it?"
        ).format(
            minutes=max(1, round(estimate["seconds"] / 60)),
            steps=estimate["steps"],
            version=estimate["version"],
        )

    @staticmethod
    def launchedJob(result: ProcessResult) -> dict[str, Any]:
        """``{"pid", "log", ...}`` printed by ``assft finetune --detach --json``."""
        try:
            document = result.jsonDocument()
        except ValueError:
            return {}
        return document if isinstance(document, dict) else {}

    def finetuneJob(
        self, workspacePath, states: tuple[str, ...] | None = None, pid: int | None = None
    ) -> dict[str, Any] | None:
        """The newest fine-tuning job (with ``last_progress``), optionally in ``states`` or of
        ``pid``."""
        from assft.workspace.jobs import JobStore

        for job in JobStore(self.openWorkspace(workspacePath)).list():
            if job.get("kind") != "finetune":
                continue
            if states is not None and job.get("state") not in states:
                continue
            if pid is not None and job.get("pid") != pid:
                continue
            return job
        return None

    def runningFinetuneJob(self, workspacePath) -> dict[str, Any] | None:
        """The fine-tuning job whose process runs now, if any."""

        return self.finetuneJob(workspacePath, states=(JobState.RUNNING,))

    @staticmethod
    def jobIsActive(job: dict[str, Any]) -> bool:
        """Whether a job (or :meth:`detachedJobStatus`) is still starting or running."""

        return job.get("state") in (JOB_STARTING, JobState.RUNNING)

    def detachedJobStatus(self, workspacePath, launched: dict[str, Any]) -> dict[str, Any]:
        """The job a detached launch started: its info once it exists, ``starting`` before, or
        ``failed`` with the log's last line when the process ended without creating one."""
        pid = launched.get("pid")
        job = self.finetuneJob(workspacePath, pid=pid) if pid else self.finetuneJob(workspacePath)
        if job is not None:
            return job
        if pid and processIsAlive(int(pid)):
            return {"state": JOB_STARTING}
        message = _("the fine-tuning process ended before it started its job")
        log = pathlib.Path(launched.get("log", ""))
        if launched.get("log") and log.is_file():
            lines = [
                line
                for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                if line.strip()
            ]
            if lines:
                message = lines[-1]

        return {"state": JobState.FAILED, "message": message}

    def startCancelJob(
        self, workspacePath, jobId: str | None = None, **callbacks
    ) -> BackgroundProcess:
        """Cancel a running job (``assft cancel``: a request the job polls, its process tree ended
        if it has not stopped in time)."""
        workspace = self.openWorkspace(workspacePath)
        return self.startEngineProcess(
            "cancel", [workspace.root, *([jobId] if jobId else [])], _("cancelling"), **callbacks
        )

    def describeJob(self, job: dict[str, Any]) -> str:

        state = job.get("state", "")
        if state == JOB_STARTING:
            return _("Starting fine-tuning...")
        if state == JobState.RUNNING:
            progress = job.get("last_progress") or {}
            return _("Fine-tuning: {progress}").format(
                progress=self.describeProgress(progress) if progress else _("starting")
            )
        return f"{state}: {job.get('message') or ''}".strip(": ")

    @staticmethod
    def jobPromotedVersion(job: dict[str, Any]) -> str | None:
        """The version a finished job promoted, if it did."""

        if job.get("state") != JobState.DONE:
            return None
        last = job.get("last_progress") or {}
        if last.get("event") == ProgressEvent.DONE and last.get("promoted"):
            return last.get("version")
        return None

    def updateModelsTable(self, workspacePath, tableNode=None):
        return fillTableNode(
            tableNode or self._namedNode("vtkMRMLTableNode", "ASSFT model versions"),
            MODEL_COLUMNS,
            self.modelVersions(workspacePath),
        )

    def showLearningCurve(self, workspacePath, version: str):
        """Fill the learning-curve chart with ``version``'s fine-tuning job (training loss and
        held-out Dice by step); returns the chart node.

        Raises:
            ValueError: no such version, or it has no recorded curve (the pretrained model).
        """
        from assft.errors import AssftError
        from assft.workspace.model_versions import ModelVersions

        try:  # one manifest, checked and named (not every version's, nor a checksum)
            entry = ModelVersions(self.openWorkspace(workspacePath)).manifest(version)
        except AssftError as error:
            raise ValueError(str(error)) from None
        curve = entry.get("learning_curve")
        if not curve:
            raise ValueError(
                _(
                    "Model version {version} has no learning curve (it was not fine-tuned here)."
                ).format(version=version)
            )
        nodes = LearningCurveNodes(
            self._namedNode("vtkMRMLTableNode", "ASSFT training loss table"),
            self._namedNode("vtkMRMLTableNode", "ASSFT held-out Dice table"),
            self._namedNode("vtkMRMLPlotSeriesNode", "ASSFT training loss"),
            self._namedNode("vtkMRMLPlotSeriesNode", "ASSFT held-out Dice"),
            self._namedNode("vtkMRMLPlotChartNode", "ASSFT learning curve"),
        )
        title = _("Learning curve of {version}").format(version=version)
        return updateLearningCurveChart(curve, title, nodes)

    def useModelVersion(self, workspacePath, version: str) -> dict[str, Any]:
        """Make ``version`` current (rollback, or forward again)."""
        from assft.errors import AssftError
        from assft.workspace.model_versions import ModelVersions

        try:
            return ModelVersions(self.openWorkspace(workspacePath)).rollback(version)
        except AssftError as error:
            raise ValueError(str(error)) from None
