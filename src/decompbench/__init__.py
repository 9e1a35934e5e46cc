"""decompbench: do activation decompositions find the features the model itself uses?

Toys with causally verified ground truth (``decompbench.toys``), decomposition methods
(``decompbench.methods``), pure ground-truth metrics (``decompbench.metrics``) and the
suite runner (``decompbench.bench``).
"""

__version__ = "0.1.0"
