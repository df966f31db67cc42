"""`python -m kronos_rolling.serve serve|predict ...`: the service commands before the main CLI is on PATH."""

from kronos_rolling.cli import KronosGroup
from kronos_rolling.serve.cli import COMMANDS


def main() -> None:
    KronosGroup("kronos-rolling-serve", commands={c.name: c for c in COMMANDS})(prog_name="python -m kronos_rolling.serve")


if __name__ == "__main__":
    main()
