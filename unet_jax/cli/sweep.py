"""Sweeps hyperparameters with Optuna: python sweep.py --config=configs/unet2d.py:tiny
--space=configs/sweeps/tiny.py --workdir=runs/sweep_tiny --trials=4 (README "Sweeps")."""

import os

from absl import flags
from ml_collections import config_flags

from unet_jax.cli import common as cli
from unet_jax.config import check as config_check
from unet_jax.tuning import search_space

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/unet2d.py", "Base config of every trial (file.py:variant).")
flags.DEFINE_string("space", None, "Search space file (configs/sweeps/NAME.py; format in unet_jax/tuning/search_space.py).")
flags.DEFINE_string("workdir", None, "Sweep folder: study.db, results, plots, and one trial_<n> workdir per trial.")
flags.DEFINE_integer("trials", 20, "Finished (complete or pruned) trials the study should hold; trials running "
                     "in other processes count too.", lower_bound=1)
flags.DEFINE_string("storage", "", "Optuna storage URL shared by several processes or machines "
                    "(default sqlite:///WORKDIR/study.db).")
flags.DEFINE_string("study_name", "", "Study name in the storage (default: the space file's name).")
flags.DEFINE_enum("pruner", "median", ["median", "none"], "Prune trials whose validation Dice is below the median.")
flags.DEFINE_integer("pruner_startup_trials", 3, "Finished trials before the pruner prunes.", lower_bound=0)
flags.DEFINE_integer("pruner_warmup_steps", 0, "Steps of a trial before the pruner may prune it.", lower_bound=0)
flags.DEFINE_integer("stale_seconds", 120, "A running trial without a heartbeat this long is failed and retried "
                     "from its checkpoint.", lower_bound=2)
flags.DEFINE_bool("enqueue_base", False, "A new study's first trial is the base config's own recipe (its values "
                  "of every space parameter): the incumbent the sampled trials must beat.")
flags.mark_flags_as_required(["space", "workdir"])


def sweep(config, space_file: str, workdir: str) -> None:
  cli.prepare(config, config_check.SECTIONS, forward_only=False)
  space = search_space.load(space_file, config)  # before JAX starts: a bad space fails in seconds
  if FLAGS.enqueue_base:
    search_space.base_params(config, space)  # the base recipe inside the space, checked as early
  from unet_jax.tuning import sweep_report, sweeps  # pylint: disable=g-import-not-at-top  (after the device flags)
  study = sweeps.run_sweep(config, space, workdir, FLAGS.trials, FLAGS.storage,
                           FLAGS.study_name or os.path.splitext(os.path.basename(space_file))[0], FLAGS.pruner,
                           FLAGS.pruner_startup_trials, FLAGS.pruner_warmup_steps, FLAGS.stale_seconds, FLAGS.enqueue_base)
  print(sweep_report.markdown(study))


def main(argv: list[str]) -> None:
  del argv
  cli.run(lambda: sweep(FLAGS.config, FLAGS.space, FLAGS.workdir), "rerun the same command to continue the sweep")

