"""Slicer-side helpers of the ASSFT module: background processes, scene I/O, worklist, dependencies.

Kept in a package because Slicer treats every ``.py`` directly in the module folder as a module.
"""
