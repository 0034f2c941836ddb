"""Research applications built on the engine: the demo, simulated annotation rounds, the
label-efficiency and speed benchmarks, pretraining the demo model and the HTML reports.

Nothing in the core engine imports this package. The 3D Slicer extension does not ship it:
there, ``assft demo`` and ``assft bench`` say that they need the pip package.
"""
