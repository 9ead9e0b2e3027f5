"""recast's SeqIO mixtures; importing this package registers every built-in mixture.

`import tasks` registers the tasks, `import mixtures` (which imports tasks) the mixtures:
GLUE and SuperGLUE (mixtures/benchmarks.py), dspt14 and recycling36 (mixtures/studies.py).
"""

from recast.mixtures import benchmarks  # noqa: F401  (glue, super_glue, glue_super_glue, ...)
from recast.mixtures import studies  # noqa: F401  (dspt14, recycling36)
from recast.mixtures.benchmarks import leave_one_out, multitask_pretraining  # noqa: F401  (gin)
