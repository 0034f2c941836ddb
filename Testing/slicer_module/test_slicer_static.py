"""Static checks of the module's files: nothing is imported, the sources are parsed.

- every widget the Python code names (``self.ui.X``) exists in the .ui file;
- every ``SlicerParameterName`` in the .ui file is a field of the ``@parameterNodeWrapper`` class,
  bound to a widget type that Slicer's GUI connectors can represent for that field's type;
- CMake lists every script of ASSFTSlicerLib and every resource; the icon is a 128x128 PNG;
- the module ships the engine without its research tools (assft/apps/) and with the same package
  data (assft/resources/) as the wheel;
- the Extensions Index description has the fields of the catalog schema and no others;
- requirements.txt, the dependency installer and pyproject.toml agree.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "ASSFTSlicer"
MODULE_FILE = MODULE / "ASSFTSlicer.py"
UI_FILE = MODULE / "Resources" / "UI" / "ASSFTSlicer.ui"
WIDGET_TEST_FILE = MODULE / "Testing" / "Python" / "ASSFTSlicerWidgetTest.py"
ENGINE_DATA = MODULE / "assft" / "resources"

# Which .ui widget classes Slicer's parameterNodeWrapper GUI connectors bind to which field types.
CONNECTABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "QComboBox"},
    "str": {"QLineEdit", "QTextEdit", "QComboBox"},
    "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "enum": {"QComboBox"},
    "node": {"qMRMLNodeComboBox"},
}


def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def _parameter_bindings() -> dict[str, tuple[str, str]]:
    """``{parameter name: (widget name, widget class)}`` from SlicerParameterName properties."""
    bindings = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.findtext("string")
                assert parameter not in bindings, f"{parameter} is bound to two widgets"
                bindings[parameter] = (name, widget.get("class"))
    return bindings


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def _enum_names(tree: ast.Module) -> set[str]:
    names = {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases)
    }
    # An enum built from a registry through the functional API
    # (``Strategy = Base("Strategy", [...])``).
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) in names | {"enum.Enum", "Enum"}
        ):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _parameter_fields(tree: ast.Module) -> dict[str, str]:
    """``{field: type text}`` of the class decorated with @parameterNodeWrapper."""
    wrapped = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert len(wrapped) == 1, "expected one @parameterNodeWrapper class"
    fields = {}
    for item in wrapped[0].body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            annotation = item.annotation
            if (
                isinstance(annotation, ast.Subscript)
                and ast.unparse(annotation.value) == "Annotated"
            ):
                annotation = annotation.slice.elts[0]
            fields[item.target.id] = ast.unparse(annotation)
    return fields


def _ui_names_used(path: Path) -> set[str]:
    """Every ``<x>.ui.<name>`` attribute the file uses."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
        ):
            names.add(node.attr)
    return names


def test_every_widget_the_code_names_exists_in_the_ui():
    widgets = _ui_widgets()
    used = _ui_names_used(MODULE_FILE)
    assert used, "the module names no widgets: the parse is broken"
    missing = sorted(used - set(widgets))
    assert not missing, f"ASSFTSlicer.py uses widgets missing from {UI_FILE.name}: {missing}"
    missing = sorted(_ui_names_used(WIDGET_TEST_FILE) - set(widgets))
    assert not missing, f"the widget test uses widgets missing from {UI_FILE.name}: {missing}"


def test_every_bound_parameter_is_a_field_with_a_connectable_widget():
    tree = _module_tree()
    fields = _parameter_fields(tree)
    enums = _enum_names(tree)
    bindings = _parameter_bindings()
    assert bindings, "no SlicerParameterName in the .ui file"
    unknown = sorted(set(bindings) - set(fields))
    assert not unknown, (
        f"SlicerParameterName(s) {unknown} are not fields of the parameter node ({sorted(fields)})"
    )
    for parameter, (widget, widget_class) in bindings.items():
        kind = fields[parameter]
        if kind in enums:
            kind = "enum"
        elif kind.startswith("vtkMRML"):
            kind = "node"
        assert widget_class in CONNECTABLE[kind], (
            f"{widget} ({widget_class}) cannot represent {parameter}: {fields[parameter]}"
        )


def _path_fields(tree: ast.Module) -> dict[str, str]:
    """The Widget's ``PATH_FIELDS`` (folder parameters bound by FolderPathConnector)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "PATH_FIELDS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("ASSFTSlicerWidget.PATH_FIELDS is missing")


def test_the_gui_fields_of_the_parameter_node_are_all_bound():
    tree = _module_tree()
    fields = _parameter_fields(tree)
    paths = _path_fields(tree)
    bindings = _parameter_bindings()
    gui_fields = {name for name, kind in fields.items() if not kind.startswith("vtkMRML")}
    unbound = sorted(gui_fields - set(bindings) - set(paths))
    assert not unbound, f"parameter(s) {unbound} have no widget in the .ui file"
    # Folder fields: typed paths, bound once (by the module's connector, not also by the .ui,
    # whose stock connector shows "." and rewrites the text as it is typed).
    widgets = _ui_widgets()
    for parameter, widget in paths.items():
        assert fields[parameter] == "pathlib.Path" and parameter not in bindings
        assert widgets[widget].get("class") == "ctkPathLineEdit"


def test_choice_fields_are_bound_to_combo_boxes_and_the_presets_come_from_models_json():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert re.search(r"modelPreset: Annotated\[str, Choice\(MODEL_PRESETS\)\]", source)
    presets = [p["name"] for p in json.loads((ENGINE_DATA / "Models.json").read_text())["presets"]]
    assert "demo" in presets and _parameter_bindings()["modelPreset"][1] == "QComboBox"


def test_the_module_file_guards_its_qt_imports():
    """The Logic must import without Qt: qt, ctk and ScriptedLoadableModule sit in a try block."""
    tree = _module_tree()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            assert not any(
                n in ("qt", "ctk") or n.startswith("slicer.ScriptedLoadableModule") for n in names
            ), f"unguarded import at line {node.lineno}"


def test_cmake_lists_every_script_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in sorted((MODULE / "ASSFTSlicerLib").glob("*.py")):
        assert f"${{MODULE_NAME}}Lib/{script.name}" in cmake, (
            f"{script.name} is not in ASSFTSlicer/CMakeLists.txt"
        )
    for resource in (
        "Resources/Icons/${MODULE_NAME}.png",
        "Resources/UI/${MODULE_NAME}.ui",
        "assft/resources/*.json",
        "assft/resources/*.pt",
    ):
        assert resource in cmake
    assert (ENGINE_DATA / "Models.json").is_file()
    assert (ENGINE_DATA / "Models.schema.json").is_file()
    assert (
        "WITH_GENERIC_TESTS" in cmake
        and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    )
    assert "assft/*.py" in cmake  # the engine ships with the module
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(ASSFTSlicer\)", top) and 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(ASSFTSlicer)" in top
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', top), f"EXTENSION_{key} is missing"
    # Obsolete: the Extensions Index's catalog entry (ASSFTSlicer.json) holds the category.
    assert "EXTENSION_CATEGORY" not in top
    assert (MODULE / "Testing" / "Python" / "CMakeLists.txt").is_file()


def _cmake_file_glob(cmake: str, variable: str) -> list[str]:
    """The patterns of ``file(GLOB[_RECURSE] <variable> RELATIVE ... <patterns>)``."""
    match = re.search(rf"file\(GLOB(?:_RECURSE)? {variable} RELATIVE \S+\s+(.*?)\)", cmake, re.S)
    assert match, f"ASSFTSlicer/CMakeLists.txt has no file(GLOB {variable} ...)"
    return [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for p in match.group(1).split()]


def test_cmake_ships_the_engine_without_apps_and_with_its_package_data():
    """Evaluate the module's globs and filter on the checkout, as CMake would."""
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert _cmake_file_glob(cmake, "ENGINE_PYTHON_SCRIPTS") == ["assft/*.py"]
    scripts = sorted(p.relative_to(MODULE).as_posix() for p in (MODULE / "assft").rglob("*.py"))
    for regex in re.findall(r'list\(FILTER ENGINE_PYTHON_SCRIPTS EXCLUDE REGEX "([^"]+)"\)', cmake):
        scripts = [s for s in scripts if not re.search(regex, s)]
    apps = {p.relative_to(MODULE).as_posix() for p in (MODULE / "assft" / "apps").rglob("*.py")}
    assert apps and not apps & set(scripts), "assft/apps/ would be installed with the module"
    engine = {p.relative_to(MODULE).as_posix() for p in (MODULE / "assft").rglob("*.py")}
    assert set(scripts) == engine - apps
    assert {"assft/__main__.py", "assft/cli/__init__.py", "assft/models/presets.py"} <= set(scripts)
    appended = cmake.index("list(APPEND MODULE_PYTHON_SCRIPTS ${ENGINE_PYTHON_SCRIPTS})")
    assert cmake.index("list(FILTER ENGINE_PYTHON_SCRIPTS") < appended, "filtered after use"

    shipped = {
        f.relative_to(MODULE).as_posix()
        for pattern in _cmake_file_glob(cmake, "ENGINE_RESOURCES")
        for f in MODULE.glob(pattern)
    }
    data = {f.relative_to(MODULE).as_posix() for f in ENGINE_DATA.iterdir() if f.is_file()}
    assert shipped == data, f"assft/resources/ files not in the module: {sorted(data - shipped)}"
    names = ("Models.json", "Models.schema.json", "demo_unet.pt", "demo_unet.json", "SampleData.md")
    names += ("foundation_unet.pt", "foundation_unet.json")
    assert {f"assft/resources/{name}" for name in names} <= data
    assert "list(APPEND MODULE_PYTHON_RESOURCES ${ENGINE_RESOURCES})" in cmake
    # The wheel carries the same data (pyproject's package-data, relative to the package).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data = project["tool"]["setuptools"]["package-data"]["assft"]
    in_wheel = {
        f"assft/{f.relative_to(MODULE / 'assft').as_posix()}"
        for pattern in package_data
        for f in (MODULE / "assft").glob(pattern)
    }
    assert data <= in_wheel, f"pyproject.toml's package-data leaves out {sorted(data - in_wheel)}"


def test_the_icon_is_a_128_pixel_png():
    data = (MODULE / "Resources" / "Icons" / "ASSFTSlicer.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


# The catalog entry schema
# (Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json):
# required fields and the only fields allowed ("additionalProperties": false).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}


def test_the_extension_description_follows_the_catalog_schema():
    entry = json.loads((ROOT / "ASSFTSlicer.json").read_text(encoding="utf-8"))
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED
    assert "slicer-extension-catalog-entry-schema-v1.0" in entry["$schema"]
    assert (
        entry["scm_type"] in ("git", "local")
        and isinstance(entry["tier"], int)
        and 1 <= entry["tier"] <= 5
    )
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"].startswith("https://") and "slicer" in entry["scm_url"].lower()
    assert entry["category"] == "Segmentation"


def _requirement_names(lines) -> dict[str, str]:
    names = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            names[re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()] = line.replace(" ", "")
    return names


def test_requirements_agree_with_the_installer_and_pyproject(monkeypatch):
    pytest.importorskip("numpy")
    monkeypatch.syspath_prepend(str(MODULE))  # as Slicer does, for this test only
    from ASSFTSlicerLib.dependencies import REQUIREMENTS

    listed = _requirement_names(
        (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    )
    installer = _requirement_names(REQUIREMENTS.values())
    assert listed == installer
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _requirement_names(
        project["dependencies"] + project["optional-dependencies"]["swin"]
    )
    assert listed == declared


def test_one_slicer_core_pinned_by_the_web_extra_is_the_one_installed():
    """trame-slicer needs slicer-core 5.11 (through slicer-layer-dm); the Slicer-side tests run
    on the same one: the web extra pins it, the set-up installs that extra, nothing else pins."""
    import importlib.metadata
    import tomllib

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '$(BIN)/pip install -q -e ".[test,swin,lint,web,browser,dicom]"' in makefile
    assert "slicer-core==" not in makefile and "install -q slicer-core" not in makefile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    (pin,) = [r for r in extras["web"] if r.startswith("slicer-core==")]
    assert importlib.metadata.version("slicer-core") == pin.split("==")[1]


def test_the_category_is_translatable_and_no_code_for_old_slicers_is_left():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in source
    for path in [MODULE_FILE, WIDGET_TEST_FILE, *(MODULE / "ASSFTSlicerLib").glob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for old in ("MasterVolumeNode", "masterVolumeNode", "before 5.4"):
            assert old not in text, f"{path.name} still has {old!r} (Slicer before 5.4)"


# What the Widget may call on the embedded editor: qMRMLSegmentEditorWidget of Slicer 5.10 and
# 5.12 (Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h, in the
# qSlicerSegmentationsModuleWidgets library; the SegmentEditor module and MONAILabel embed it).
SEGMENT_EDITOR_API = {
    "setMRMLScene",
    "setMRMLSegmentEditorNode",
    "mrmlSegmentEditorNode",
    "setSegmentationNodeSelectorVisible",
    "setSourceVolumeNodeSelectorVisible",
    "setSegmentationNode",
    "segmentationNode",
    "setSourceVolumeNode",
    "sourceVolumeNode",
    "setActiveEffect",
    "updateWidgetFromMRML",
    "installKeyboardShortcuts",
    "uninstallKeyboardShortcuts",
    "removeViewObservations",
}


def _calls_on(path: Path, widget: str) -> set[str]:
    """Every ``<x>.ui.<widget>.<method>`` the file uses, also through a local name
    (``editor = self.ui.<widget>`` then ``editor.<method>``)."""

    def is_widget(node) -> bool:
        return (
            isinstance(node, ast.Attribute)
            and node.attr == widget
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
        )

    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and is_widget(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
            is_widget(node.value) or (isinstance(node.value, ast.Name) and node.value.id in aliases)
        ):
            names.add(node.attr)
    return names


def test_the_annotate_section_embeds_a_segment_editor():
    tree = ET.parse(UI_FILE)
    annotate = next(w for w in tree.iter("widget") if w.get("name") == "annotateCollapsibleButton")
    editors = [w for w in annotate.iter("widget") if w.get("class") == "qMRMLSegmentEditorWidget"]
    assert [w.get("name") for w in editors] == ["segmentEditorWidget"]
    custom = {c.findtext("class"): c for c in tree.iter("customwidget")}
    assert custom["qMRMLSegmentEditorWidget"].findtext("header") == "qMRMLSegmentEditorWidget.h"
    assert custom["qMRMLSegmentEditorWidget"].findtext("extends") == "qMRMLWidget"
    used = _calls_on(MODULE_FILE, "segmentEditorWidget")
    assert {
        "installKeyboardShortcuts",
        "uninstallKeyboardShortcuts",
        "setMRMLSegmentEditorNode",
    } <= used
    unknown = (used | _calls_on(WIDGET_TEST_FILE, "segmentEditorWidget")) - SEGMENT_EDITOR_API
    assert not unknown, f"not methods of qMRMLSegmentEditorWidget: {sorted(unknown)}"
    # Its own parameter node (not the Segment Editor module's), and its selectors hidden.
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "editor.setSegmentationNodeSelectorVisible(False)" in source
    assert "editor.setSourceVolumeNodeSelectorVisible(False)" in source


def test_the_license_icon_and_screenshot_are_where_the_index_looks():
    """A LICENSE that matches pyproject.toml; the extension icon and the screenshot in the
    top-level Resources/, and CMake's URLs naming files the repository holds."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "BSD-3-Clause"}
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("BSD 3-Clause License")
    assert "Neither the name of the copyright holder" in license_text
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    prefix = "https://raw.githubusercontent.com/assft/ASSFTSlicer/main/"
    urls = {
        key: re.search(rf'set\(EXTENSION_{key} "([^"]+)"\)', top).group(1)
        for key in ("ICONURL", "SCREENSHOTURLS")
    }
    files = {key: [ROOT / u.removeprefix(prefix) for u in url.split()] for key, url in urls.items()}
    assert all(url.startswith(prefix) for url in " ".join(urls.values()).split())
    assert files["ICONURL"] == [ROOT / "Resources" / "Icons" / "ASSFTSlicer.png"]
    assert (
        files["ICONURL"][0].read_bytes()
        == (MODULE / "Resources/Icons/ASSFTSlicer.png").read_bytes()
    )
    for screenshot in files["SCREENSHOTURLS"]:
        assert screenshot.parent == ROOT / "Resources"
        data = screenshot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] >= 800
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Resources/Screenshot01.png" in readme


def test_both_registered_slicer_tests_skip_without_the_dependencies():
    """The Extensions Index build machines have no PyTorch: each registered test's first step
    is requireDependencies() (unittest.SkipTest with the reason), and runTest reports a skip."""
    for path, method in ((MODULE_FILE, "test_ASSFTSlicer_loop"), (WIDGET_TEST_FILE, "test_panel")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        function = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == method
        )
        calls = [
            ast.unparse(statement.value.func)
            for statement in function.body
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
        ]
        assert calls and calls[0] == "requireDependencies", f"{path.name}: {method} must skip first"
        run = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == "runTest"
        )
        assert "unittest.SkipTest" in ast.unparse(run), f"{path.name}: runTest must report a skip"
