"""Data the engine makes itself for its own checks: tiny synthetic volumes and a tiny preset
(the Slicer self-test uses them). The MNI152-based sample data and its sites are research tools:
``assft/apps/sampledata.py`` and ``assft/apps/sites.py``."""
