"""Run one small fit() with an epoch checkpoint, in its own process, so a test can kill it.

usage: python tests/support/train_worker.py BASE_DIR CHECKPOINT_DIR OUT_FILE
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, where support/ lives

from kronos_rolling.data.store import DataStore  # noqa: E402
from kronos_rolling.training.checkpoint import Checkpoint
from kronos_rolling.training.loop import fit
from support.training import small_config, state_of, trainee_and_sets  # noqa: E402

CHECKPOINT_FINGERPRINT = "test-resume"


def run(base_dir, checkpoint_dir, epochs=4, samples=192):
    torch.set_num_threads(1)
    config = small_config(base_dir, epochs=epochs, max_samples_per_epoch=samples, patience=10)
    trainee, train_set, inner_set = trainee_and_sets(config, DataStore())
    checkpoint = Checkpoint(Path(checkpoint_dir), CHECKPOINT_FINGERPRINT) if checkpoint_dir else None
    result = fit(trainee, train_set, inner_set, config, device=torch.device("cpu"), checkpoint=checkpoint,
                 progress=False)
    return trainee, result


if __name__ == "__main__":
    trainee, result = run(sys.argv[1], sys.argv[2])
    torch.save({"state": state_of(trainee), "epochs": [h.epoch for h in result.history]}, sys.argv[3])
