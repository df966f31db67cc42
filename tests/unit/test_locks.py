"""The machine-wide locks within this process (no child process: those are in
tests/integration/test_locks.py)."""

from __future__ import annotations

import pytest

from kronos_rolling.errors import LockBusy
from kronos_rolling.locks import (
    device_busy,
    holder,
    registry_lock,
    training_lock,
)


def test_this_process_holding_the_lock_counts_as_busy(lock_dir):
    assert not device_busy(lock_dir)
    with training_lock(lock_dir, wait=False):
        assert device_busy(lock_dir)
        with pytest.raises(LockBusy):
            with training_lock(lock_dir, wait=False):
                pass
    assert not device_busy(lock_dir) and holder(lock_dir) is None


def test_registry_lock_times_out_with_a_clear_message(lock_dir):
    with registry_lock(lock_dir, "kronos-lora-crypto", timeout=5):
        with pytest.raises(LockBusy, match="registry lock of kronos-lora-crypto"):
            with registry_lock(lock_dir, "kronos-lora-crypto", timeout=0.2):
                pass
        with registry_lock(lock_dir, "kronos-lora-equity", timeout=0.2):  # other models are independent
            pass
