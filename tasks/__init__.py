"""recast's SeqIO tasks; importing this package registers every built-in task."""

from tasks import glue  # noqa: F401  (registers glue_*)
from tasks import super_glue  # noqa: F401  (registers super_glue_*)
from tasks import dspt  # noqa: F401  (registers the self-pretraining corpora and dspt14)
from tasks import recycling  # noqa: F401  (registers the model-recycling datasets, recycling36)
from tasks import pretraining  # noqa: F401,E402  (T_<objective> tasks, wikipedia_en_*)
from tasks import demo as _demo  # noqa: E402

_demo.register_demo_tasks()  # generated demo tasks (demo_*), written once to the cache
