"""recast's SeqIO tasks; importing this package registers every built-in task."""

from recast.tasks import glue  # noqa: F401  (registers glue_*)
from recast.tasks import super_glue  # noqa: F401  (registers super_glue_*)
from recast.tasks import dspt  # noqa: F401  (registers the self-pretraining corpora and dspt14)
from recast.tasks import recycling  # noqa: F401  (registers the model-recycling datasets, recycling36)
from recast.tasks import pretraining  # noqa: F401,E402  (T_<objective> tasks, wikipedia_en_*)
from recast.tasks import demo_tasks as _demo  # noqa: E402

_demo.register_demo_tasks()  # generated demo tasks (demo_*), written once to the cache
