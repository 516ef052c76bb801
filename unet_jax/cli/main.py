"""The `unet-jax` command: `unet-jax train|evaluate|explain|export|sweep [flags]`.

Each command is the top-level script of the same name (`unet-jax train ...` is `python train.py ...`:
the same flags, output and exit status); its module here (unet_jax/cli/train.py, ...) holds its flags,
usage text and `main`. `unet-jax COMMAND --help` shows that command's usage and flags. Only the chosen
command's module is imported: each defines its own absl flags (`--workdir` differs between them).
"""

import importlib
import re
import sys

from absl import app, flags

COMMANDS = {  # name: what it does, as `unet-jax --help` lists it
    "train": "train a U-Net (resumes from the workdir's last checkpoint)",
    "evaluate": "score checkpoints on labelled splits and write a report, or segment a TIFF / OME-Zarr stack",
    "explain": "show how a trained U-Net arrived at each mitochondrion, and which filters did it",
    "export": "export a trained U-Net as a bioimage.io model package (ONNX weights)",
    "sweep": "sweep hyperparameters with Optuna",
}

USAGE = """usage: unet-jax COMMAND [flags]

Commands (the same flags as python COMMAND.py; `unet-jax COMMAND --help` lists them):
{commands}

Example: unet-jax train --config=configs/unet2d.py:tiny --workdir=/tmp/tiny
The default --config, configs/unet2d.py, is relative to the current folder; elsewhere pass its path.
"""


def run_command(name: str, program: str = "") -> None:
  """Runs the entry point `name` (a key of COMMANDS) on sys.argv[1:], shown as `program` (default `python ARGV0`)."""
  from unet_jax.cli import common  # pylint: disable=g-import-not-at-top  (`unet-jax --help` imports no JAX)
  command = importlib.import_module(f"unet_jax.cli.{name}")  # defines its flags, reading sys.argv for --config
  common.program = program  # the command line its reports record
  doc = command.__doc__
  if program.startswith("unet-jax"):
    doc = re.sub(r"\bpython (" + "|".join(COMMANDS) + r")\.py\b", r"unet-jax \1", doc)
  sys.modules["__main__"].__doc__ = doc  # absl's --help prints __main__'s docstring ...
  for flag in flags.FLAGS.flags_by_module_dict().get(command.__name__, []):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)  # ... and the flags of the module named argv[0]
  app.run(command.main, flags_parser=common.parse_flags)


def main() -> None:
  """`unet-jax COMMAND [flags]`: runs COMMAND with sys.argv[0] as `unet-jax` and the flags after COMMAND."""
  name = sys.argv[1] if len(sys.argv) > 1 else ""
  if name not in COMMANDS:
    usage = USAGE.format(commands="\n".join(f"  {n:<9} {what}" for n, what in COMMANDS.items()))
    if name in ("-h", "--help", "help"):
      print(usage, end="")
      return
    sys.exit(f"{usage}\nerror: {'unknown command ' + repr(name) if name else 'no command given'}; "
             f"choose one of {', '.join(COMMANDS)}")
  sys.argv = ["unet-jax", *sys.argv[2:]]
  run_command(name, f"unet-jax {name}")


if __name__ == "__main__":
  main()
