#!/usr/bin/env python
"""Train the event-conditioned Kronos adapter (the phase document's entry script).

    python kronos-service/finetune/train_event_conditioned.py pooled [OPTIONS]
    python kronos-service/finetune/train_event_conditioned.py rolling --asset-class crypto \\
        --warm-start models:/kronos-lora-crypto@production [OPTIONS]

The same command as `kronos-rolling train pooled|rolling` (same options, same MLflow
run); `--warm-start` takes a folder, runs:/<run_id>/adapter, models:/NAME@ALIAS, 'auto'
or 'none'. Under `torchrun --nproc-per-node N` it trains with DistributedDataParallel.
"""

import logging
import sys

from kronos_rolling.cli.main import KronosGroup
from kronos_rolling.cli.pipeline import train


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    group = KronosGroup(name="train_event_conditioned.py", commands=train.commands, help=__doc__)
    group(prog_name="train_event_conditioned.py")


if __name__ == "__main__":
    main()
