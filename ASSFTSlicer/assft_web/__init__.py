"""``assft web``: the annotation loop in a browser, on trame-slicer and the Slicer module's Logic.

A front end like the Slicer module, above the engine: the engine never imports it. The command
reaches the engine's command line through the ``assft.commands`` entry point (pyproject.toml),
and needs the ``web`` extra (``pip install "assft[web]"``).
"""
