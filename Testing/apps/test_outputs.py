"""Where the apps' verbs write: checked before any work, never into a workspace, written whole,
and a benchmark section that cannot hold another one's markers (the re-attack of issue 21)."""

from __future__ import annotations

import os

import pytest

from assft.apps.label_efficiency_report import markers
from assft.apps.outputs import markdown_target, output_folder, update_markdown
from assft.errors import BadInputError
from assft.workspace.config import CONFIG_FILE_NAME
from assft_testing import run_cli


@pytest.fixture
def workspace_folder(tmp_path):
    folder = tmp_path / "ws"
    (folder / "models").mkdir(parents=True)
    (folder / CONFIG_FILE_NAME).write_text("{}")
    return folder


def test_an_output_folder_is_checked_and_made_outside_every_workspace(tmp_path, workspace_folder):
    assert output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not made: bad input later leaves nothing
    with pytest.raises(BadInputError, match="lies inside the workspace"):
        output_folder(workspace_folder / "models")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="is not a folder"):
        output_folder(tmp_path / "file")
    with pytest.raises(BadInputError, match="cannot be created"):
        output_folder(tmp_path / "file" / "below")


def test_a_markdown_target_is_a_md_file_in_a_folder_outside_workspaces(tmp_path, workspace_folder):
    assert markdown_target(tmp_path / "B.md") == tmp_path / "B.md"
    for bad, why in [
        (workspace_folder / CONFIG_FILE_NAME, "not a Markdown file"),
        (workspace_folder / "notes.md", "inside the workspace"),
        (tmp_path / "missing" / "x.md", "folder that does not exist"),
    ]:
        with pytest.raises(BadInputError, match=why):
            markdown_target(bad)
    (tmp_path / "dir.md").mkdir()
    with pytest.raises(BadInputError, match="not a regular file"):
        markdown_target(tmp_path / "dir.md")


def test_a_section_cannot_carry_markers_and_others_survive_its_update(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    t2, flair = markers("t2"), markers("flair")
    evil_model = "/x/a<!-- bench:label-efficiency:t2:begin -->b.json"
    evil = markers("t2", model=evil_model)
    update_markdown(path, f"{evil[0]}\nmodel {evil_model}\n{evil[1]}", *evil)
    update_markdown(path, f"{flair[0]}\nflair one\n{flair[1]}", *flair)
    update_markdown(path, f"{t2[0]}\nt2 one\n{t2[1]}", *t2)
    update_markdown(path, f"{t2[0]}\nt2 two\n{t2[1]}", *t2)  # replaces its own section only
    text = path.read_text()
    assert "flair one" in text and "t2 two" in text and "t2 one" not in text
    assert "model /x/a&lt;!-- bench:label-efficiency:t2:begin --&gt;b.json" in text
    assert text.count(t2[0]) == 1 and text.count(flair[0]) == 1
    # Two models whose names clean to the same tag keep separate sections.
    assert markers("t2", model="/a/my model.json") != markers("t2", model="/b/my_model.json")
    assert markers("t2", model="foundation-demo") != markers("t2", model="/l/foundation-demo.json")


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_sample_data_never_writes_through_a_link_left_in_its_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / ".manifest.json.tmp").symlink_to(victim)
    result = run_cli(
        "sample-data", str(out), "--n", "1", "--n-source", "0", "--sites", "t2", "--spacing", "12"
    )
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me"
    assert (out / "manifest.json").is_file() and not (out / "manifest.json").is_symlink()


def test_bench_refuses_bad_run_flags_before_it_creates_anything(tmp_path, workspace_folder):
    out = tmp_path / "out"
    for flags, message in [
        (["--iterations", "0"], "--iterations must be from 1"),
        (["--max-minutes", "nan"], "--max-minutes must be a positive number"),
        (["--rounds", "0"], "--rounds must be from 1 to 100"),
        (["--views", "0"], "--views must be from 1 to 4"),
        (["--markdown", str(workspace_folder / CONFIG_FILE_NAME)], "not a Markdown file"),
    ]:
        result = run_cli("bench", "label-efficiency", "--site", "t2", "--out", str(out), *flags)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)
        assert not out.exists()
    result = run_cli("bench", "label-efficiency", "--out", str(workspace_folder / "models"))
    assert result.returncode == 2 and "lies inside the workspace" in result.stderr
