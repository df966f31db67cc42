"""What a job needs from its surroundings, resolved once by the command that starts it.

The command loads the settings (settings.py), connects to the tracking server and opens
the data folder; every step receives this object instead of reading the environment or
library globals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kronos_rolling.data.store import DataStore
from kronos_rolling.registry.history import Actor
from kronos_rolling.settings import (
    Distributed,
    Home,
    Settings,
    Thresholds,
)
from kronos_rolling.tracking.context import Tracking


@dataclass(frozen=True)
class JobContext:
    tracking: Tracking
    store: DataStore
    home: Home  # epoch checkpoints and caches live here
    lock_dir: Path  # the training lock and the registry locks
    thresholds: Thresholds
    webhook: str | None  # alerts; None: logged only
    actor: Actor  # who acts, for the audit trail
    distributed: Distributed = Distributed()  # which torchrun process this is

    @classmethod
    def from_settings(cls, settings: Settings, tracking: Tracking, store: DataStore | None = None) -> "JobContext":
        return cls(tracking=tracking, store=store or DataStore(settings.data_dir), home=settings.home,
                   lock_dir=settings.lock_dir, thresholds=settings.thresholds, webhook=settings.alert_webhook,
                   actor=Actor.current(settings.job),
                   distributed=settings.distributed)

    @property
    def client(self):
        return self.tracking.client
