"""How the engine runs: progress reporting, cancellation, torchrun helpers, and the one module
that holds every operating-system-specific call (:mod:`assft.runtime.portable`).
"""
