"""Translation of the module's texts: Slicer's ``tr`` and ``translate`` (``slicer.i18n``).

The slicer-core wheel (the tests' MRML without the application) has no ``slicer.i18n``: there the
texts stay as written.
"""

try:
    from slicer.i18n import tr, translate
except ImportError:  # the slicer-core wheel

    def tr(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:
        return text


__all__ = ["tr", "translate"]
