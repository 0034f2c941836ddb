"""Where the apps' verbs write: output folders and BENCHMARKS-style Markdown files, checked
before any work starts, and a section written whole.

Each check ends in one line that names the path (:class:`~assft.errors.BadInputError`, exit 2),
so that a benchmark of hours cannot fail at its very end on a folder it could never write, and no
verb writes into a workspace's own files.
"""

from __future__ import annotations

import os
from pathlib import Path

from assft.errors import BadInputError
from assft.workspace.config import enclosing_workspace
from assft.workspace.files import write_text_atomic

__all__ = ["markdown_target", "output_folder", "update_markdown"]


def output_folder(path: str | Path) -> Path:
    """An output folder outside every workspace that can be made where it is (checked only: the
    verb makes it once its inputs are checked too, so that bad input leaves nothing behind).

    Raises:
        BadInputError: the path lies inside a workspace, names something that is not a folder,
            or lies under a file or a folder that cannot be written.
    """
    folder = Path(path).expanduser().resolve()
    workspace = enclosing_workspace(folder)
    if workspace is not None:
        raise BadInputError(
            f"lies inside the workspace {workspace}: write to a folder outside every workspace",
            folder,
        )
    if folder.exists() and not folder.is_dir():
        raise BadInputError("is not a folder", folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise BadInputError(f"cannot be created: {existing} is not a folder", folder)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot be written: {existing} is not writable", folder)
    return folder


def markdown_target(path: str | Path, *, folder_made_later: bool = False) -> Path:
    """A Markdown file a section may be written into: a ``.md`` file outside every workspace,
    in an existing folder (unless the verb makes it: ``folder_made_later``), and a regular file
    when it exists.

    Raises:
        BadInputError: anything else (a folder, a device, a missing folder, a workspace's file).
    """
    target = Path(path).expanduser().absolute()
    if target.suffix.lower() != ".md":
        raise BadInputError("is not a Markdown file (.md): a section is written into one", target)
    workspace = enclosing_workspace(target.parent)
    if workspace is not None:
        raise BadInputError(f"lies inside the workspace {workspace}", target)
    if not folder_made_later and not target.parent.is_dir():
        raise BadInputError("is in a folder that does not exist", target)
    if target.exists() and not target.is_file():
        raise BadInputError("is not a regular file", target)
    return target


def update_markdown(path: Path, section: str, begin: str, end: str) -> None:
    """Replace (or append) one benchmark's section of a Markdown file, between its markers, and
    write the file whole (a temporary file, then a rename).

    Inside the section, anything that would open or close an HTML comment is escaped (a model's
    file name, a command line), so that no section can hold another section's markers.
    """
    inner = section
    if section.startswith(begin) and section.endswith(end):
        inner = section[len(begin) : len(section) - len(end)]
    inner = inner.replace("<!--", "&lt;!--").replace("-->", "--&gt;")
    section = begin + inner + end
    # UTF-8 whatever the locale: the tables hold non-ASCII signs (a C locale would refuse them).
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        text = text[:start] + section + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, text)
