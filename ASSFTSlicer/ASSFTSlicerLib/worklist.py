"""The worklist and model-version tables, the DKD-vs-ASD chart and a version's learning curve,
as MRML nodes.

Rows are built from the engine's documents (the latest ranking, the case registry, the model
registry) by plain functions; filling table and plot nodes needs the MRML classes only, so the
same code runs in Slicer (shown in ``qMRMLTableView`` and a plot view) and in tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import slicer
import vtk

__all__ = [
    "MODEL_COLUMNS",
    "WORKLIST_COLUMNS",
    "Column",
    "LearningCurveNodes",
    "fillTableNode",
    "gateSummary",
    "modelRows",
    "updateLearningCurveChart",
    "updateScoreChart",
    "worklistRows",
]


@dataclass(frozen=True)
class Column:
    """A table column: title shown, key in the row dicts, ``"string"`` or ``"double"``."""

    title: str
    key: str
    kind: str = "string"


WORKLIST_COLUMNS = (
    Column("Rank", "rank", "double"),
    Column("Case", "case"),
    Column("Priority", "priority", "double"),
    Column("DKD", "dkd", "double"),
    Column("ASD", "asd", "double"),
    Column("Hardest structure", "hardest"),
    Column("Status", "status"),
    Column("Selected", "selected"),
    Column("Reason", "reason"),
)

MODEL_COLUMNS = (
    Column("Version", "version"),
    Column("Current", "current"),
    Column("Parent", "parent"),
    Column("Mode", "mode"),
    Column("Held-out Dice", "dice", "double"),
    Column("Promoted", "promoted"),
    Column("Created", "created"),
    Column("Gate", "gate"),
    Column("Learning curve", "curve"),
)


def _number(value: Any) -> float:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        else math.nan
    )


def _hardest(row: dict[str, Any]) -> str:
    """The structure with the highest ASD, from ``hardest_structure`` or ``asd_per_class``."""
    if row.get("hardest_structure"):
        return str(row["hardest_structure"])
    perClass = row.get("asd_per_class")
    if isinstance(perClass, dict):
        scored = [(v, k) for k, v in perClass.items() if isinstance(v, (int, float))]
        if scored:
            return str(max(scored)[1])
    return ""


def worklistRows(ranking: dict[str, Any] | None, statuses: dict[str, str]) -> list[dict[str, Any]]:
    """One row per ranked case, best first, with the case's current status.

    Args:
        ranking: The latest ranking document (``workspace.latest_ranking()``), or None.
        statuses: ``{case id: status}`` from the registry.
    """
    if not ranking:
        return []
    rows = []
    for row in sorted(ranking.get("cases", []), key=lambda r: _number(r.get("rank"))):
        case = str(row.get("case", ""))
        rows.append(
            {
                "rank": _number(row.get("rank")),
                "case": case,
                # What the order follows (older rankings have only the score).
                "priority": _number(row.get("priority", row.get("score"))),
                "dkd": _number(row.get("dkd")),
                "asd": _number(row.get("asd")),
                "hardest": _hardest(row),
                "status": statuses.get(case, "unknown"),
                "selected": "yes" if row.get("selected") else "",
                "reason": str(row.get("reason") or ""),
            }
        )
    return rows


def modelRows(models: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model version (``ModelVersions.to_json()``), newest first."""
    # Imported here: the document came from the engine, so it is installed by now.
    from assft.workspace.version_names import BASE_VERSION

    rows = []
    for entry in reversed(models.get("versions", [])):
        metrics = entry.get("metrics") or {}
        gate = entry.get("gate")
        curve, points = _curveCells(entry.get("learning_curve"))
        rows.append(
            {
                "version": str(entry.get("version", "")),
                "current": "yes" if entry.get("current") else "",
                "parent": str(entry.get("parent") or ""),
                "mode": str(
                    entry.get("mode")
                    or ("pretrained" if entry.get("version") == BASE_VERSION else "")
                ),
                "dice": _number(metrics.get("validation_dice")),
                "promoted": "yes" if entry.get("promoted") else "no",
                "created": str(entry.get("created_at") or ""),
                # A damaged version (unreadable manifest, or damaged weights of the current
                # one) shows its problem where the gate's verdict would be.
                "gate": "DAMAGED: " + str(entry["error"])
                if entry.get("error")
                else gateSummary(gate)
                if isinstance(gate, dict)
                else "",
                "curve": curve,
                "curve_points": points,
            }
        )
    return rows


def gateSummary(gate: dict[str, Any]) -> str:
    """The gate's verdict, then its change per part of the archive (the held-out scans of each
    acquisition), e.g. ``...: not worse; by part: 1 +0.021, 2 -0.013 (like case_004)``: the
    part a version made worse is named by a scan that stands for it."""
    reason = str(gate.get("reason", ""))
    parts = gate.get("parts")
    if not isinstance(parts, list) or len(parts) < 2:
        return reason
    cells = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("change"), (int, float)):
            continue
        label = part.get("part")
        label = str(label + 1) if isinstance(label, int) else str(part.get("name", "?"))
        cells.append(f"{label} {part['change']:+.3f}")
    return f"{reason}; by part: {', '.join(cells)}" if cells else reason


def _curveCells(curve) -> tuple[str, dict[str, Any] | None]:
    """A version's learning curve, read once: the table cell (steps and the step kept) and the
    chart's data (``loss`` and ``dice`` ``[step, value]`` points along the job's steps and the
    ``kept`` step; None when none was recorded). A malformed curve is said in the cell and must
    not hide the rest of the table."""
    from assft.training.curves import LearningCurve, summarize_curve

    if not curve:
        return "", None
    try:
        parsed = LearningCurve.from_dict(curve)
        summary = summarize_curve(parsed)
        loss, dice = parsed.points()
        best = parsed.best
        kept = parsed.global_step(best["stage"], best["step"]) if best else None
    except (KeyError, TypeError, ValueError, IndexError) as error:
        return f"unreadable learning curve: {error!r}", None
    points = {
        "loss": [[step, value] for step, value in loss],
        "dice": [[step, value] for step, value in dice],
        "kept": kept,
    }
    return summary, points


def fillTableNode(tableNode, columns: Sequence[Column], rows: Sequence[dict[str, Any]]):
    """Replace a table node's content (created when None) with ``rows``; returns the node."""
    if tableNode is None:
        tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    wasModified = tableNode.StartModify()
    table = tableNode.GetTable()
    table.Initialize()
    for column in columns:
        array = vtk.vtkDoubleArray() if column.kind == "double" else vtk.vtkStringArray()
        array.SetName(column.title)
        array.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            value = row.get(column.key)
            if column.kind == "double":
                array.SetValue(index, _number(value))
            else:
                array.SetValue(index, "" if value is None else str(value))
        table.AddColumn(array)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.SetLocked(True)
    tableNode.Modified()
    tableNode.EndModify(wasModified)
    return tableNode


def updateScoreChart(
    tableNode,
    seriesNode=None,
    chartNode=None,
    title: str = "Knowledge gap (DKD) vs difficulty (ASD)",
):
    """A scatter plot of the worklist's DKD (x) against ASD (y), one point per case.

    Returns:
        ``(series node, chart node)``, created when None.
    """
    if seriesNode is None:
        seriesNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", "ASSFT cases")
    if chartNode is None:
        chartNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "ASSFT ranking")
    seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
    seriesNode.SetXColumnName("DKD")
    seriesNode.SetYColumnName("ASD")
    seriesNode.SetLabelColumnName("Case")
    seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    seriesNode.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
    seriesNode.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
    seriesNode.SetMarkerSize(10)
    seriesNode.SetColor(0.90, 0.30, 0.24)
    if not chartNode.HasPlotSeriesNodeID(seriesNode.GetID()):
        chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
    chartNode.SetTitle(title)
    chartNode.SetXAxisTitle("DKD (knowledge gap)")
    chartNode.SetYAxisTitle("ASD (anatomical difficulty)")
    chartNode.SetLegendVisibility(False)
    return seriesNode, chartNode


@dataclass
class LearningCurveNodes:
    """The nodes of a learning-curve chart: a table and a line per quantity, one chart."""

    lossTable: Any
    diceTable: Any
    lossSeries: Any
    diceSeries: Any
    chart: Any


def updateLearningCurveChart(curve: dict[str, Any], title: str, nodes: LearningCurveNodes):
    """Show a fine-tuning job's learning curve (``LearningCurve.to_dict()``): training loss and
    held-out Dice against the step from the start of the job (stage 2 follows stage 1), one
    line each, with their tables (``Step``, ``Training loss`` / ``Held-out Dice``).

    Returns:
        ``nodes.chart``.
    """
    from assft.training.curves import curve_points

    loss, validation = curve_points(curve)
    lines = (
        (nodes.lossTable, nodes.lossSeries, "Training loss", loss, (0.20, 0.45, 0.80)),
        (nodes.diceTable, nodes.diceSeries, "Held-out Dice", validation, (0.90, 0.30, 0.24)),
    )
    for table, series, name, points, color in lines:
        fillTableNode(
            table,
            (Column("Step", "step", "double"), Column(name, "value", "double")),
            [{"step": step, "value": value} for step, value in points],
        )
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("Step")
        series.SetYColumnName(name)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*color)
        if not nodes.chart.HasPlotSeriesNodeID(series.GetID()):
            nodes.chart.AddAndObservePlotSeriesNodeID(series.GetID())
    nodes.chart.SetTitle(title)
    nodes.chart.SetXAxisTitle("step")
    nodes.chart.SetYAxisTitle("training loss, held-out Dice")
    nodes.chart.SetLegendVisibility(True)
    return nodes.chart
