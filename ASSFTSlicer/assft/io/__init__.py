"""Files in and out: medical images (NIfTI, NRRD, MHA, DICOM series), preprocessing, atomic writes.

The lowest layer of the engine: it knows nothing of workspaces, models or queries.
"""
