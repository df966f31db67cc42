"""`python -m kronos_rolling.serve serve|predict ...`: the service commands before the main CLI is on PATH."""

from kronos_rolling.cli.main import KronosGroup
from kronos_rolling.cli.serve import COMMANDS


def main(prog_name: str = "python -m kronos_rolling.serve") -> None:
    KronosGroup("kronos-rolling-serve", commands={c.name: c for c in COMMANDS})(prog_name=prog_name)


if __name__ == "__main__":
    main()
