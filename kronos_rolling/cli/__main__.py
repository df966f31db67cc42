"""`python -m kronos_rolling.cli ...` runs `kronos-rolling ...`."""

from kronos_rolling.cli.main import main

main(prog_name="kronos-rolling")
