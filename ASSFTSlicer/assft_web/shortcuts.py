"""The page's own scripts: keyboard shortcuts (the keys of Slicer's Segment Editor where it has
them) and the annotator's name kept in the browser.

The page sends each key pressed outside a text field, as a normalised name ("z", "ctrl+z",
"shift+ctrl+z", "escape", "1", "+", "ctrl+enter"...), to the server's ``assft_key`` trigger;
:data:`SHORTCUTS` maps it to an action of :class:`assft_web.app.AnnotationApp`, and
:data:`HELP` lists them on the page, in the order shown.
"""

from __future__ import annotations

SHORTCUTS: dict[str, str] = {
    "z": "undo",
    "ctrl+z": "undo",
    "y": "redo",
    "ctrl+y": "redo",
    "shift+ctrl+z": "redo",
    "escape": "no_tool",
    "1": "paint",
    "2": "erase",
    "3": "scissors",
    "4": "draw",
    "q": "previous_segment",
    "w": "next_segment",
    "-": "smaller_brush",
    "+": "larger_brush",
    "=": "larger_brush",  # "+" without Shift on most keyboards
    "arrowup": "next_slice",
    "arrowdown": "previous_slice",
    "f": "next_slice",
    "b": "previous_slice",
    "h": "toggle_labels",
    "ctrl+enter": "submit",
    "?": "help",
}
"""Key name -> action. Slicer's Segment Editor: z / y undo and redo, Esc unselects the
effect, the digits select the effects in the toolbar's order, q / w the previous and next
segment, - / + shrink and grow the brush by 20 %; Slicer's slice views: the up and down arrows,
or f and b, the next and previous slice of the view under the mouse. Added here: Ctrl+Z / Ctrl+Y
(and Cmd on macOS), H to hide or show the labels, Ctrl+Enter to submit, ? for this list."""

HELP: list[tuple[str, str]] = [
    ("Z or Ctrl+Z", "undo"),
    ("Y, Ctrl+Y or Ctrl+Shift+Z", "redo"),
    ("1, 2, 3, 4", "Paint, Erase, Scissors, Draw"),
    ("Esc", "no tool (leave the effect)"),
    ("Q / W", "previous / next segment"),
    ("- / +", "shrink / grow the brush by 20 %"),
    ("Up / Down or F / B", "next / previous slice of the view under the mouse"),
    ("H", "hide or show the labels"),
    ("Ctrl+Enter", "submit the case"),
    ("?", "this list"),
]
"""What the help panel shows (Cmd stands for Ctrl on macOS)."""

BRUSH_STEP = 1.2
"""How much - and + change the brush diameter, as in Slicer (20 %)."""

KEY_SCRIPT = """
window.addEventListener('keydown', (event) => {
  const target = event.target;
  const typing = target && (target.isContentEditable
    || ['TEXTAREA', 'SELECT'].includes(target.tagName)
    || (target.tagName === 'INPUT' && !['checkbox', 'radio', 'range', 'button', 'submit']
        .includes(target.type)));
  if (typing) {
    return;  // typing in a text field; a checkbox or a slider with the focus is no text field
  }
  if (!window.trame || !window.trame.trigger) {
    return;
  }
  const key = event.key.toLowerCase();
  if (['control', 'shift', 'alt', 'meta'].includes(key)) {
    return;
  }
  const ctrl = event.ctrlKey || event.metaKey;
  let name = key;
  if (ctrl) {
    name = (event.shiftKey ? 'shift+' : '') + 'ctrl+' + key;
  } else if (event.altKey) {
    return;
  }
  window.trame.trigger('assft_key', [name]);
  if (ctrl && ['z', 'y', 'enter'].includes(key)) {
    event.preventDefault();  // not the browser's own undo
  }
});
"""
"""The page's listener: every key outside a text field goes to the server, named as
:data:`SHORTCUTS` names them."""


ANNOTATOR_SCRIPT = """
(() => {
  const key = 'assft-annotator';
  const start = () => {
    if (!window.trame || !window.trame.state) {
      setTimeout(start, 200);
      return;
    }
    const saved = window.localStorage.getItem(key);
    if (saved && !window.trame.state.get('annotator')) {
      window.trame.state.set('annotator', saved);
    }
    window.trame.state.watch(['annotator'], (name) => {
      if (name) {
        window.localStorage.setItem(key, name);
      }
    });
  };
  start();
})();
"""
"""Keeps the annotator's name in the browser (asked once, then sent with each start)."""


def action_of(key: str) -> str | None:
    """The action a key name stands for (None: not a shortcut)."""
    return SHORTCUTS.get(key)
