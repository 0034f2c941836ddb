"""Translation of the module's texts: Slicer's ``tr`` where there is one (Slicer 5.4 on)."""

try:
    from slicer.i18n import tr
except ImportError:  # Slicer before 5.4, or the slicer-core wheel

    def tr(text: str) -> str:
        return text


__all__ = ["tr"]
