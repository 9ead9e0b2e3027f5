"""recast: multi-task text-to-text training (SeqIO tasks and mixtures, T5 in JAX, gin, Ray).

The package is a house of floors, each importing only the floors below it:

  recast.errors, .atomic_files, .gin_config, .metrics_writer   the base every floor uses
  recast.tasks, recast.mixtures     SeqIO tasks and mixtures, and the one name lookup
  recast.trainer                    the library and the single-run commands
  recast.jobs                       what runs many trainings and reads their folders
  recast.cli                        the `recast` command, which only dispatches

In a checkout the floors are the top-level folders `tasks/`, `mixtures/`, `trainer/`,
`jobs/` and `gin/`; the wheel installs them under `recast/`.
"""

__version__ = "0.2.0"
