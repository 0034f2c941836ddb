"""The annotation loop in a real browser: ``assft web`` in its own process, Debian's Chromium
driven by Playwright, a real workspace of sample brain scans and the shipped demo model.

The tests run in file order on one server and one page, as a clinician works: open the worklist
and rank, label the top case (predicted in the background), paint with the mouse and submit (the
stored label checked voxel by voxel against the edit), a refused overlap, skip and reopen, then
cancel a fine-tuning job from the page. Measured figures (page to first views, "Label next" to an
editable case, server memory) are printed and, with ``ASSFT_WEB_FIGURES=FILE``, written as JSON;
``ASSFT_WEB_SCREENSHOT=FILE`` keeps a screenshot of the loaded case (README's).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from assft_testing import run_cli, skip_without_template
from assft_testing.browser import chromium_path, require_web, web_server

require_web()
pytestmark = skip_without_template()

TIMEOUT_MS = 180_000
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from assft.apps.sampledata import write_sample_data

    data = tmp_path_factory.mktemp("web-data")
    write_sample_data(data, 4, n_source=0, sites=["t2"], seed=7, spacing=4.0)
    root = tmp_path_factory.mktemp("web") / "ws"
    images = data / "sites" / "t2" / "images"
    run_cli("init", str(root), "--images", str(images), check=True)
    # A long recipe, so that the job is still running when the page cancels it.
    recipe = root.parent / "recipe.json"
    recipe.write_text(json.dumps({"iterations": 5000, "semi_iterations": 5000, "views": 1}))
    return root


@pytest.fixture(scope="module")
def server(workspace):
    recipe = workspace.parent / "recipe.json"
    with web_server(
        workspace,
        "--token",
        "browser-test-token-0123456789",
        "--finetune-config",
        str(recipe),
        "--device",
        "cpu",
        # Two picks of four cases: the worklist marks which.
        "--budget",
        "2",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        hosts: set[str] = set()
        page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
        page.hosts = hosts
        failed: list[str] = []  # what the browser's console reports as a failed resource
        page.on(
            "response",
            lambda r: (
                failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None
            ),
        )
        page.failed = failed
        yield page
        browser.close()
    if os.environ.get("ASSFT_WEB_FIGURES"):
        Path(os.environ["ASSFT_WEB_FIGURES"]).write_text(json.dumps(FIGURES, indent=2) + "\n")
    print("web figures:", FIGURES)


def _text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def _current_case(page) -> str:
    return _text(page, "#current-case").removeprefix("Case:").strip().strip("-").strip()


def _wait_case(page, not_case: str = "") -> str:
    """Wait until a case other than ``not_case`` is loaded; a timeout says what the page said."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "(old) => { const t = document.querySelector('#current-case').innerText"
            ".replace('Case:', '').trim(); return t && t !== '-' && t !== old; }",
            arg=not_case,
            timeout=TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        raise AssertionError(
            f"no case other than {not_case!r} opened; the page says: "
            f"{_text(page, '#message')!r}, task: {_text(page, '#task-text')!r}"
        ) from None
    return _current_case(page)


def _wait_message(page, fragment: str) -> None:
    """Wait until the page's message says ``fragment``; a timeout says what it said instead."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "(f) => document.querySelector('#message').innerText.includes(f)",
            arg=fragment,
            timeout=TIMEOUT_MS,
        )
    except PlaywrightTimeout:
        raise AssertionError(
            f"the page never said {fragment!r}; it says: {_text(page, '#message')!r}, "
            f"task: {_text(page, '#task-text')!r}"
        ) from None


def _worklist_cases(page) -> list[str]:
    return page.eval_on_selector_all(
        "#worklist tbody tr[data-case]", "rows => rows.map(r => r.dataset.case)"
    )


def _assert_fits(page, table: str) -> None:
    """The table shows every column without scrolling sideways, inside the left drawer."""
    widths = page.eval_on_selector(
        f"{table} .v-table__wrapper", "w => [w.scrollWidth, w.clientWidth]"
    )
    assert widths[0] <= widths[1] + 1, f"{table} scrolls sideways: {widths}"
    first = page.locator(f"{table} thead th").first.bounding_box()
    assert first is not None and first["x"] >= 0 and first["width"] > 0


def _views(page):
    """The slice views' images, the axial view (the largest) first."""
    boxes = [page.locator("#views img").nth(i).bounding_box() for i in range(3)]
    return sorted(boxes, key=lambda b: -b["width"] * b["height"])


def _drag(page, box, start, offset, steps: int = 25) -> None:
    """A real mouse drag in a view: from ``start`` (fractions of its box) by ``offset`` pixels."""
    x0, y0 = box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(x0 + offset[0] * i / steps, y0 + offset[1] * i / steps)
        page.wait_for_timeout(25)
    page.mouse.up()


def _changed_pixels(a: bytes, b: bytes) -> int:
    """How many pixels differ clearly between two screenshots (PNG)."""
    import io

    from PIL import Image

    first, second = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), int) for x in (a, b))
    return int((np.abs(first - second).sum(-1) > 30).sum())


def _warmth_added(a: bytes, b: bytes) -> float:
    """Where two screenshots differ clearly: how much redder than blue ``a`` is there, beyond
    ``b`` (mean of R - B; a grey overlay adds about 0, a heat map much more)."""
    import io

    from PIL import Image

    first, second = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), int) for x in (a, b))
    changed = np.abs(first - second).sum(-1) > 30
    warmth = (first[..., 0] - first[..., 2]) - (second[..., 0] - second[..., 2])
    return float(warmth[changed].mean())


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _prediction(workspace: Path, case: str) -> np.ndarray:
    (path,) = (workspace / "predictions").glob(f"*/{case}.nii.gz")
    return _array(path)


def _label(workspace: Path, case: str) -> Path:
    return workspace / "labels" / f"{case}.nii.gz"


def _wait_painted(page) -> None:
    """Wait until the undo button says the edit reached the server's undo stack."""
    page.wait_for_function(
        "() => !document.querySelector('button:has(i.mdi-undo)').disabled", timeout=30_000
    )


def test_a_request_without_the_token_gets_nothing(server):
    for url in (server.base, server.base + "index.html", server.base + "ws"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 403 and refused.value.read() == b""
    wrong = server.base + "?token=not-the-token-0123456789"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 403


def test_open_the_worklist_and_rank(page, server, workspace):
    started = time.monotonic()
    page.goto(server.url)
    page.wait_for_selector("#rank", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => { const imgs = document.querySelectorAll('#views img');"
        " return imgs.length >= 3 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }",
        timeout=TIMEOUT_MS,
    )
    FIGURES["page_to_first_views_s"] = round(time.monotonic() - started, 2)
    assert page.failed == []  # the launcher request was a 405 in the console (issue 22)
    # VTK warned of a deprecation once per view at every start (issue 22).
    assert not [line for line in server.output if "Warning" in line or "WARN" in line]
    assert "4 unlabeled" in _text(page, "#counts")
    assert _worklist_cases(page) == []
    page.click("#rank")
    page.wait_for_function(
        "() => document.querySelectorAll('#worklist tbody tr[data-case]').length === 4",
        timeout=TIMEOUT_MS,
    )
    headers = page.eval_on_selector_all(
        "#worklist thead th", "cells => cells.map(c => c.innerText.trim())"
    )
    assert headers == ["#", "Case", "Priority", "Status", "Why"]
    _assert_fits(page, "#worklist")
    # The budget's two picks are marked, and they are what the ranking selected.
    picks = page.eval_on_selector_all(
        "#worklist tbody tr[data-pick='true']", "rows => rows.map(r => r.dataset.case)"
    )
    from assft.workspace import Workspace

    ranking = Workspace.open(workspace).latest_ranking()
    selected = [c["case"] for c in ranking["cases"] if c.get("selected")]
    assert len(picks) == 2 and sorted(picks) == sorted(selected)
    assert page.locator("#worklist .pick").count() == 2
    # The order follows the priority shown; DKD, ASD and the hardest structure are in its tooltip.
    priorities = [float(p) for p in page.locator("#worklist .priority").all_inner_texts()]
    assert priorities == sorted(priorities, reverse=True)
    assert all(
        t.startswith("DKD ") and ", ASD " in t
        for t in page.eval_on_selector_all(
            "#worklist .priority", "cells => cells.map(c => c.title)"
        )
    )
    # Each reason is shown in full: it wraps, nothing is cut off.
    reasons = page.eval_on_selector_all(
        "#worklist .reason",
        "cells => cells.map(c => [c.innerText.trim(), c.scrollWidth <= c.clientWidth + 1])",
    )
    assert reasons and all(text and whole for text, whole in reasons), reasons
    assert _text(page, "#rank") == "RANK"  # the button is Rank again, not Cancel


def test_label_next_predicts_in_the_background_and_loads_the_top_case(page, workspace):
    top = _worklist_cases(page)[0]
    page.click("#label-next")
    page.wait_for_function(
        "() => document.querySelector('#task-text').innerText.includes('predict')"
        " || document.querySelector('#current-case').innerText.replace('Case:', '').trim()"
        " !== '-'",
        timeout=TIMEOUT_MS,
    )
    assert _wait_case(page) == top
    assert not list((workspace / "labels").glob("*.nii.gz"))
    # The segment list fills in as the editor's state arrives: wait until it has.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.v-navigation-drawer--right input')]"
        ".slice(0, 3).filter(f => f.value).length === 3",
        timeout=30_000,
    )
    segments = page.eval_on_selector_all(
        ".v-navigation-drawer--right input", "fields => fields.map(f => f.value)"
    )
    assert segments[:3] == ["grey matter", "white matter", "cerebrospinal fluid"]  # the workspace's
    # The uncertainty overlay: the views change when it is turned off, and back when on.
    page.wait_for_timeout(1000)
    with_overlay = page.locator("#views").screenshot()
    page.click("#show-uncertainty")
    page.wait_for_timeout(1500)
    without = page.locator("#views").screenshot()
    page.click("#show-uncertainty")
    page.wait_for_timeout(1500)
    back = page.locator("#views").screenshot()
    assert _changed_pixels(with_overlay, without) > 500  # the overlay was there
    assert _warmth_added(with_overlay, without) > 20  # in a heat colour map, not grey
    assert _changed_pixels(with_overlay, back) < _changed_pixels(with_overlay, without) / 10
    assert page.is_checked("#show-uncertainty")
    if os.environ.get("ASSFT_WEB_SCREENSHOT"):
        page.wait_for_timeout(1500)
        page.screenshot(path=os.environ["ASSFT_WEB_SCREENSHOT"])


def _texture_under_labels(shown: bytes, hidden: bytes) -> float:
    """How much of the scan's texture is left where the labels are drawn: the spread of the
    brightness there with the labels shown, over that without them (0: a solid fill)."""
    import io

    from PIL import Image

    first, second = (
        np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), float) for x in (shown, hidden)
    )
    drawn = np.abs(first - second).sum(-1) > 30
    assert drawn.sum() > 500, "no label drawn"
    return float(first.mean(-1)[drawn].std() / max(second.mean(-1)[drawn].std(), 1e-6))


def test_the_first_case_shows_the_scan_through_its_labels(page, workspace):
    """The first case after a server start was drawn as a solid fill that hid the scan, until
    the first undo (issue 22): labels are see-through, with outlines, from the first case on,
    and H hides and shows them."""
    page.mouse.move(5, 5)
    page.wait_for_timeout(1500)
    shown = page.locator("#views").screenshot()
    page.keyboard.press("h")
    page.wait_for_function("() => !document.querySelector('#show-labels').checked")
    page.wait_for_timeout(1500)
    hidden = page.locator("#views").screenshot()
    page.keyboard.press("h")
    page.wait_for_function("() => document.querySelector('#show-labels').checked")
    ratio = _texture_under_labels(shown, hidden)
    FIGURES["texture_under_labels"] = round(ratio, 3)
    assert ratio > 0.3, f"the labels hide the scan (texture left {ratio:.2f})"


def test_the_views_say_where_they_are(page, workspace):
    """Each view names itself, the patient's directions at its edges and the slice it shows; the
    "Show in 3D" button that did nothing on a page without a 3-D view is gone (issue 22)."""
    import re

    assert page.locator("#views .mdi-video-3d").count() == 0
    views = page.eval_on_selector_all(
        "#views .view-name",
        "names => names.map(n => { const v = n.parentElement; return [n.innerText.trim(),"
        " ['left', 'right', 'top', 'bottom'].map(e =>"
        " (v.querySelector('.orientation-' + e) || {innerText: ''}).innerText.trim()),"
        " (v.querySelector('.slice-number') || {innerText: ''}).innerText.trim()]; })",
    )
    letters = {name: edges for name, edges, _ in views}
    assert letters == {
        "Axial": ["R", "L", "A", "P"],
        "Coronal": ["R", "L", "S", "I"],
        "Sagittal": ["A", "P", "S", "I"],
    }, views
    for name, _, number in views:
        found = re.fullmatch(r"slice (\d+) / (\d+)", number)
        assert found and 1 <= int(found[1]) <= int(found[2]) > 1, (name, number)


def test_window_level_changes_the_scan_and_reset_brings_it_back(page, workspace):
    """No window/level could be set (issue 22): the scan's presets ("Auto" from its percentiles;
    an MR scan gets no CT presets), a window typed in, left-drag in a view, and Reset."""
    assert page.is_visible("#window-level")
    assert "Auto" in _text(page, "#window-level")
    page.mouse.move(5, 5)
    page.wait_for_timeout(1000)
    before = page.locator("#views").screenshot()
    window = float(page.input_value("#wl-window"))
    assert window > 0
    page.fill("#wl-window", str(round(window / 8, 2)))
    page.wait_for_timeout(2000)
    narrow = page.locator("#views").screenshot()
    changed = _changed_pixels(before, narrow)
    assert changed > 2000, f"a window 8 times narrower changed {changed} pixels"
    page.click("#wl-reset")
    _wait_for_window(page, "Math.abs(v - w) < 0.01", window)
    back = _views_settled(page)
    assert _changed_pixels(before, back) < changed / 10

    # Left-drag in a view with no tool active (issue 22): to the left narrows the window, as in
    # Slicer's window/level mouse mode, and the fields follow; nothing is painted.
    page.keyboard.press("Escape")
    axial = _views(page)[0]
    _drag(page, axial, (0.5, 0.5), (-axial["width"] * 0.25, 0))
    _wait_for_window(page, "v > 0 && v < w * 0.95", window)
    dragged = _views_settled(page)
    assert _changed_pixels(back, dragged) > 1000  # most of the brain is under its labels
    assert page.is_disabled("button:has(i.mdi-undo)"), "the drag edited the label"
    page.click("#wl-reset")
    _wait_for_window(page, "Math.abs(v - w) < 0.01", window)


def _wait_for_window(page, test: str, window: float) -> None:
    """Wait until the Window field's value ``v`` passes ``test`` (JavaScript; ``w``: ``window``)."""
    page.wait_for_function(
        "(w) => { const v = Number(document.querySelector('#wl-window').value);"
        f" return {test}; }}",
        arg=window,
        timeout=30_000,
    )


def _views_settled(page) -> bytes:
    """The views once the mouse is away and what it changed is drawn."""
    page.mouse.move(5, 5)
    page.wait_for_timeout(2000)
    return page.locator("#views").screenshot()


def test_the_position_voxel_and_intensity_under_the_mouse_are_shown(page, workspace):
    """No intensity under the cursor (issue 22): moving the mouse over a view shows where it is
    (RAS, mm), the voxel and its intensity; another point, another voxel."""
    import re

    pattern = re.compile(
        r"[RL] [\d.]+ [AP] [\d.]+ [SI] [\d.]+ \| voxel \((\d+), (\d+), (\d+)\) \| \S+"
    )
    axial = _views(page)[0]
    seen = []
    for fx, fy in ((0.5, 0.5), (0.4, 0.6)):
        page.mouse.move(axial["x"] + axial["width"] * fx, axial["y"] + axial["height"] * fy)
        page.wait_for_timeout(300)
        page.mouse.move(axial["x"] + axial["width"] * fx + 1, axial["y"] + axial["height"] * fy)
        page.wait_for_function(
            "(old) => { const t = document.querySelector('#cursor-info').innerText;"
            " return t.includes('voxel') && t !== old; }",
            arg=seen[-1] if seen else "",
            timeout=30_000,
        )
        seen.append(_text(page, "#cursor-info"))
    voxels = [pattern.fullmatch(line) for line in seen]
    assert all(voxels), seen
    assert voxels[0].groups() != voxels[1].groups()


def test_keys_undo_a_stroke_and_list_themselves(page, workspace):
    """Ctrl+Z did nothing (issue 22): it undoes, 1 picks Paint, ? lists the keys."""
    case = _current_case(page)
    undo = "button:has(i.mdi-undo)"
    assert page.is_disabled(undo)
    page.locator("#views").hover()
    # The focus is on the uncertainty checkbox the test before clicked: keys work there too.
    page.keyboard.press("1")  # Paint, as in Slicer's Segment Editor: the stroke paints
    page.wait_for_timeout(500)
    axial = _views(page)[0]
    _drag(page, axial, (0.06, 0.45), (60, 20))
    _wait_painted(page)
    page.keyboard.press("Control+z")
    page.wait_for_function(
        "() => document.querySelector('button:has(i.mdi-undo)').disabled", timeout=30_000
    )
    page.keyboard.press("Escape")  # no tool
    page.keyboard.press("?")
    page.wait_for_selector("#shortcuts", state="visible", timeout=30_000)
    assert "Ctrl+Z" in _text(page, "#shortcuts") and "Paint" in _text(page, "#shortcuts")
    page.click("#shortcuts-close")
    page.wait_for_selector("#shortcuts", state="hidden", timeout=30_000)
    assert _current_case(page) == case and not _label(workspace, case).exists()


def _slice_numbers(page) -> dict[str, int]:
    """The slice each view shows, by view name."""
    shown = page.eval_on_selector_all(
        "#views .view-name",
        "names => names.map(n => [n.innerText.trim(),"
        " (n.parentElement.querySelector('.slice-number') || {innerText: ''}).innerText.trim()])",
    )
    return {name: int(number.split()[1]) for name, number in shown if number}


def test_the_arrow_keys_move_the_slice_of_the_view_under_the_mouse(page, workspace):
    """The arrow keys did nothing (issue 22): Up / Down (or F / B, as in Slicer) move the view
    under the mouse by one slice, within the scan; the other views stay."""
    start = _slice_numbers(page)

    def hover(name: str) -> None:
        label = page.locator(f"#views .view-name:text-is('{name}')").bounding_box()
        x, y = label["x"] - 80, label["y"] + 120  # inside the view, below-left of its name
        page.mouse.move(x, y)
        page.mouse.move(x + 2, y + 2)
        page.wait_for_timeout(500)

    def wait_for(name: str, expected: int) -> None:
        page.wait_for_function(
            "([name, n]) => [...document.querySelectorAll('#views .view-name')].some(v =>"
            " v.innerText.trim() === name && v.parentElement.querySelector('.slice-number')"
            ".innerText.trim().startsWith('slice ' + n + ' '))",
            arg=[name, expected],
            timeout=30_000,
        )

    hover("Axial")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    wait_for("Axial", start["Axial"] + 2)
    page.keyboard.press("b")
    wait_for("Axial", start["Axial"] + 1)
    page.keyboard.press("ArrowDown")
    wait_for("Axial", start["Axial"])
    hover("Coronal")
    page.keyboard.press("f")
    wait_for("Coronal", start["Coronal"] + 1)
    assert _slice_numbers(page) == {**start, "Coronal": start["Coronal"] + 1}
    page.keyboard.press("ArrowDown")
    wait_for("Coronal", start["Coronal"])
    assert _slice_numbers(page) == start


def test_paint_with_the_mouse_submit_and_the_next_case_opens(page, workspace):
    case = _current_case(page)
    predicted = _prediction(workspace, case)
    page.click("button:has(i.mdi-brush)")  # Paint, with the first segment (grey matter)
    # The default brush, as a user gets it: a disc in the slice (issue 22; was a sphere).
    axial = _views(page)[0]
    _drag(page, axial, (0.06, 0.45), (60, 20))
    _wait_painted(page)
    page.click("#submit")
    # The first submit from this browser asks who is labeling (issue 22), once.
    page.wait_for_selector("#annotator-dialog", state="visible", timeout=30_000)
    page.fill("#annotator-name", "Browser Tester")
    page.click("#annotator-save")
    following = _wait_case(page, case)
    assert following != case and following == _worklist_cases(page)[1]
    from assft.workspace import Workspace

    assert Workspace.open(workspace).registry.audit_trail(case)[-1]["user"] == "Browser Tester"
    assert page.evaluate("() => localStorage.getItem('assft-annotator')") == "Browser Tester"
    assert "Labeling as Browser Tester" in _text(page, "#annotator")

    stored = _array(_label(workspace, case))
    assert stored.shape == predicted.shape
    changed = stored != predicted
    assert changed.any(), "the stroke changed nothing"
    # Voxel by voxel: every voxel outside the stroke is the prediction, every voxel in it is
    # grey matter (label 1), and the stroke lies in one axial slice.
    assert (stored[changed] == 1).all()
    slices = np.unique(np.nonzero(changed)[0])
    assert len(slices) == 1, f"a stroke in one axial view touched slices {slices}"
    assert (stored[~changed] == predicted[~changed]).all()
    # The drag went 60 pixels right and 20 down: the band is wider (along the scan's rows, left
    # to right in an axial view) than tall.
    _k, rows, columns = np.nonzero(changed)
    assert np.ptp(columns) > np.ptp(rows)
    assert "labeled" in _text(page, "#counts")


def test_overlapping_segments_are_refused_then_asked(page, workspace):
    case = _current_case(page)
    predicted = _prediction(workspace, case)
    key = "SegmentEditorState__segment_edit_area__SegmentEditAreaState__overwrite_mode"
    page.evaluate(f"window.trame.state.set('{key}', 2)")  # Masking options: allow overlap
    page.locator(".v-navigation-drawer--right .v-list-item").nth(1).click()  # white matter
    page.click("button:has(i.mdi-brush)")
    axial = _views(page)[0]
    _drag(page, axial, (0.2, 0.5), (axial["width"] * 0.6, 0))
    _wait_painted(page)
    page.click("#submit")
    page.wait_for_selector("#overlap-dialog", state="visible", timeout=30_000)
    assert "overlap" in _text(page, "#overlap-dialog").lower()
    assert not _label(workspace, case).exists()  # refused: nothing written
    page.click("#overlap-no")
    page.wait_for_selector("#overlap-dialog", state="hidden", timeout=30_000)
    assert not _label(workspace, case).exists() and _current_case(page) == case

    page.click("#submit")
    page.click("#overlap-yes")
    _wait_case(page, case)
    stored = _array(_label(workspace, case))
    changed = stored != predicted
    # The segment lowest in the list wins: painted white matter (2) over grey matter (1).
    assert changed.any() and (stored[changed] == 2).all()
    assert ((predicted == 1) & (stored == 2)).any()


def test_skip_then_reopen_a_predicted_case(page, workspace):
    skipped = _current_case(page)
    page.click("#skip")
    last = _wait_case(page, skipped)
    assert last != skipped
    started = time.monotonic()
    page.click(f"#worklist tr[data-case='{skipped}'] button")
    assert _wait_case(page, last) == skipped
    FIGURES["label_to_editable_case_s"] = round(time.monotonic() - started, 2)


def test_an_edit_not_submitted_is_asked_about_before_another_case_opens(page, workspace):
    """Opening another case dropped the edits of the loaded one without a word (issue 22)."""
    case = _current_case(page)
    # A labeled case to go to: the unlabeled ones stay for the validation test below.
    other = next(c for c in _worklist_cases(page) if c != case and _label(workspace, c).exists())
    page.click("button:has(i.mdi-brush)")
    axial = _views(page)[0]
    _drag(page, axial, (0.3, 0.5), (40, 0))
    _wait_painted(page)
    page.click(f"#worklist tr[data-case='{other}'] button")
    page.wait_for_selector("#discard-dialog", state="visible", timeout=30_000)
    assert f"Case {case} has edits that are not submitted" in _text(page, "#discard-dialog")
    page.click("#discard-no")  # back to editing: the case and its edit stay
    page.wait_for_selector("#discard-dialog", state="hidden", timeout=30_000)
    assert _current_case(page) == case
    page.click(f"#worklist tr[data-case='{other}'] button")
    page.wait_for_selector("#discard-dialog", state="visible", timeout=30_000)
    page.click("#discard-yes")
    assert _wait_case(page, case) == other
    assert not _label(workspace, case).exists()  # discarded, never stored


def test_propose_validation_scans_then_submit_one_as_such(page, workspace):
    """The page proposes validation scans (one per part of the archive, in the background);
    the clinician opens one, and 'Submit as validation scan' stores its label held out."""
    from assft.workspace import Workspace

    page.click("#propose-validation")
    _wait_message(page, "Validation scans")
    message = _text(page, "#message")
    current = _current_case(page)
    proposed = [
        row["case_id"]
        for row in Workspace.open(workspace).registry.cases(status="unlabeled")
        if row["case_id"] in message and row["case_id"] != current
    ]
    assert proposed, message
    case = proposed[0]
    page.click(f"#worklist tr[data-case='{case}'] button")
    assert _wait_case(page, current) == case
    page.click("#submit-validation")
    _wait_message(page, "validation scan now")
    assert Workspace.open(workspace).registry.case(case)["status"] == "held-out"
    assert _label(workspace, case).is_file()
    # Released again: the later tests fine-tune with a 4-step recipe, which this one scan's
    # gate may refuse (the gate itself is tested with the engine's).
    Workspace.open(workspace).hold_out([case], release=True)


def test_cancel_fine_tuning_from_the_page(page, workspace, server):
    import psutil

    FIGURES["server_rss_mb"] = round(psutil.Process(server.process.pid).memory_info().rss / 2**20)
    from assft.workspace import Workspace

    current = Workspace.open(workspace).current_model_version()
    # A job started from the command line beside the server holds the workspace: the page's
    # Fine-tune is refused while it runs.
    recipe = str(workspace.parent / "recipe.json")
    run_cli(
        "finetune", str(workspace), "--detach", "--config", recipe, "--device", "cpu", check=True
    )
    page.click("#finetune")
    page.wait_for_function(
        "() => document.querySelector('#message').innerText.includes('already running')",
        timeout=60_000,
    )
    assert _text(page, "#finetune") == "FINE-TUNE"
    run_cli("cancel", str(workspace), check=True)
    assert Workspace.open(workspace).status_summary()["running_job"] is None

    page.click("#finetune")
    page.wait_for_function(
        "() => document.querySelector('#job-text').innerText.includes('Fine-tuning:')",
        timeout=TIMEOUT_MS,
    )
    assert _text(page, "#finetune") == "CANCEL FINE-TUNING", (
        _text(page, "#job-text"),
        _text(page, "#message"),
    )
    page.click("#finetune")
    page.wait_for_function(
        "() => document.querySelector('#finetune').innerText.trim() === 'FINE-TUNE'",
        timeout=TIMEOUT_MS,
    )
    assert "cancel" in _text(page, "#job-text").lower()
    jobs = json.loads(run_cli("jobs", str(workspace), "--json", check=True).stdout)["jobs"]
    assert [job["state"] for job in jobs if job.get("kind") == "finetune"] == ["cancelled"] * 2
    after = Workspace.open(workspace)
    assert after.current_model_version() == current  # the cancelled job promoted nothing
    assert after.status_summary()["running_job"] is None
    assert page.hosts == {server.base.split("/")[2]}  # the page asked no other host


def test_a_version_made_outside_the_page_shows_with_its_curve_and_use_rolls_back(page, workspace):
    """A fine-tuning job from the command line promotes v1: the page shows it (it looks at the
    workspace every few seconds) with its learning curve as a chart and in short, and Use on v0
    rolls back."""
    from assft.workspace import Workspace

    recipe = workspace.parent / "short-recipe.json"
    recipe.write_text(json.dumps({"iterations": 4, "semi_iterations": 4, "views": 1}))
    done = run_cli(
        "finetune", str(workspace), "--config", str(recipe), "--device", "cpu", check=True
    )
    assert Workspace.open(workspace).current_model_version() == "v1", done.stdout + done.stderr

    v1 = page.locator('#versions tr:has(td span:text-is("v1"))')
    v1.wait_for(timeout=30_000)
    cells = [c.strip() for c in v1.locator("td").all_inner_texts()]
    assert cells[1] == "yes"  # current
    assert any(c.endswith(" steps") and c.split()[0].isdigit() for c in cells), cells
    # The learning curve is a chart (issue 22, item 7): the training loss along the job's steps.
    chart = v1.locator("svg.curve-chart")
    assert chart.count() == 1 and chart.bounding_box()["width"] >= 60
    loss = chart.locator("polyline.curve-loss").get_attribute("points")
    assert len(loss.split()) >= 2, loss
    assert page.locator('#versions tr:has(td span:text-is("v0")) svg.curve-chart').count() == 0
    page.click('#versions tr:has(td span:text-is("v0")) button:has-text("Use")')
    page.wait_for_function(
        "() => [...document.querySelectorAll('#versions tr')].some(r =>"
        " r.cells.length > 1 && r.cells[0].innerText.trim() === 'v0'"
        " && r.cells[1].innerText.trim() === 'yes')",
        timeout=30_000,
    )
    assert Workspace.open(workspace).current_model_version() == "v0"
    assert "v0 is current" in _text(page, "#message")
    # After the rollback the Version column is still in view, with the parent in its tooltip.
    _assert_fits(page, "#versions")
    assert _text(page, "#versions thead th") == "Version"
    assert page.get_attribute('#versions td span:text-is("v1")', "title") == "fine-tuned from v0"


def test_the_browser_keeps_the_annotator_across_a_reload(page, workspace):
    page.reload()
    page.wait_for_selector("#rank", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#annotator').innerText.includes('Browser Tester')",
        timeout=30_000,
    )
