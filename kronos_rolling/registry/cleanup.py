"""Acting on retention: delete old versions, their runs and logged models, reclaim storage.

Deleting a version, a run or a logged model through the client only marks the run and
the logged model deleted; their files stay until `mlflow gc` removes them. gc talks to
the backend store directly (it needs the database URI that the tracking server was
started with, which only the server side knows) and deletes artifacts through the
tracking server, so it needs both. We pass gc the exact run and logged-model ids we
deleted, never "everything deleted". Like every `mlflow gc` run, it also purges
experiments that are already in the deleted state.

A run is deleted with a version only when no surviving version (of any registered
model) comes from the same run; otherwise only the version goes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import RegistryError
from kronos_rolling.locks import registry_lock
from kronos_rolling.registry import history
from kronos_rolling.registry.client import (
    call,
    get_registered_model,
    is_missing,
    list_versions,
)
from kronos_rolling.registry.history import Actor
from kronos_rolling.registry.names import registered_model_name
from kronos_rolling.registry.retention import VersionInfo, choose_versions_to_delete
from kronos_rolling.settings import REGISTRY_LOCK_TIMEOUT_S, ServerStores, Thresholds
from kronos_rolling.tracking.server import redact

log = logging.getLogger(__name__)

_MODEL_ID = re.compile(r"(?:^models:/|/models/)(m-[0-9a-f]+)")


@dataclass
class RetentionReport:
    name: str
    keep: int
    kept: list[int]
    deleted: list[int]
    dry_run: bool
    runs_deleted: list[str] = field(default_factory=list)
    logged_models_deleted: list[str] = field(default_factory=list)
    reclaimed: bool = False  # gc removed the files

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        deleted = ", ".join(f"v{v}" for v in self.deleted) or "nothing"
        kept = ", ".join(f"v{v}" for v in self.kept) or "none"
        text = f"{self.name}: {verb} {deleted}; kept {kept} (newest {self.keep} + aliased)"
        if self.deleted and not self.dry_run:
            text += (f"; {len(self.runs_deleted)} run(s) and {len(self.logged_models_deleted)} "
                     "logged model(s) deleted; storage "
                     + ("reclaimed by mlflow gc" if self.reclaimed else "NOT reclaimed (no gc)"))
        return text


def apply_retention(client: MlflowClient, asset_class: str, keep: int = Thresholds.keep_versions, *,
                    gc: ServerStores | None, lock_dir: Path, dry_run: bool = False,
                    actor: Actor | None = None, at: datetime | None = None) -> RetentionReport:
    name = registered_model_name(asset_class)
    if keep < 1:
        raise RegistryError(f"--keep {keep}: retention keeps at least 1 version")
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        model = get_registered_model(client, name)
        aliases_of: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(int(version), []).append(alias)
        versions = list_versions(client, name)
        doomed = choose_versions_to_delete(
            [VersionInfo(int(v.version), tuple(aliases_of.get(int(v.version), ())))
             for v in versions], keep)
        kept = sorted(int(v.version) for v in versions if int(v.version) not in doomed)
        report = RetentionReport(name, keep, kept, doomed, dry_run)
        if dry_run or not doomed:
            return report

        by_number = {int(v.version): v for v in versions}
        done: list[int] = []
        try:
            for number in doomed:
                _delete_version(client, name, by_number[number], set(doomed), report)
                done.append(number)
        finally:
            if done:  # record what went, also when a later deletion failed
                entry = history.new_entry(
                    history.next_seq(model.tags), history.RETENTION, None, None,
                    f"deleted {', '.join(f'v{v}' for v in done)} (keep newest {keep} + aliased)",
                    actor or Actor.current(), at)
                history.write_entry(client, name, entry)

    if gc is not None and report.runs_deleted:
        collect_garbage(client.tracking_uri, gc, report.runs_deleted, report.logged_models_deleted)
        report.reclaimed = True
    elif report.logged_models_deleted or report.runs_deleted:
        log.warning("%s: runs %s and logged models %s are deleted but their files remain until "
                    "`mlflow gc` runs", name, report.runs_deleted, report.logged_models_deleted)
    return report


def _delete_version(client: MlflowClient, name: str, version, doomed: set[int],
                    report: RetentionReport) -> None:
    run_id = version.run_id or None
    model_ids = _logged_models_of(client, version)
    shared = False
    if run_id:
        siblings = call(f"find versions from run {run_id}", client.search_model_versions,
                        f"run_id = '{run_id}'")
        shared = any(not (s.name == name and int(s.version) in doomed) for s in siblings)
    call(f"delete {name} v{version.version}", client.delete_model_version, name, version.version)
    if shared:
        log.info("%s v%s: run %s also backs a kept version; keeping the run", name,
                 version.version, run_id)
        return
    for model_id in model_ids:
        _soft_delete(f"delete logged model {model_id}", client.delete_logged_model, model_id)
        report.logged_models_deleted.append(model_id)
    if run_id:
        _soft_delete(f"delete run {run_id}", client.delete_run, run_id)
        report.runs_deleted.append(run_id)


def _logged_models_of(client: MlflowClient, version) -> list[str]:
    """The logged models a version's run produced, and the one its source names."""
    ids: list[str] = []
    match = _MODEL_ID.search(version.source or "")
    if match:
        ids.append(match.group(1))
    if version.run_id:
        try:
            run = call(f"read run {version.run_id}", client.get_run, version.run_id)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
        else:
            found = call(f"find logged models of run {version.run_id}",
                         client.search_logged_models, [run.info.experiment_id],
                         filter_string=f"source_run_id = '{version.run_id}'")
            ids += [m.model_id for m in found if m.model_id not in ids]
    return ids


def _soft_delete(what: str, fn, item_id: str) -> None:
    try:
        call(what, fn, item_id)
    except MlflowException as exc:
        if not is_missing(exc):  # already gone is fine: someone deleted it by hand
            raise


def collect_garbage(tracking_uri: str, gc: ServerStores, run_ids: list[str],
                    logged_model_ids: list[str]) -> None:
    """Run `mlflow gc` for exactly these deleted runs and logged models."""
    command = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", gc.backend_store_uri,
               "--tracking-uri", tracking_uri, "--run-ids", ",".join(run_ids)]
    if gc.artifacts_destination:
        command += ["--artifacts-destination", gc.artifacts_destination]
    if logged_model_ids:
        command += ["--logged-model-ids", ",".join(logged_model_ids)]
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        shown = " ".join(redact(part) if "://" in part else part for part in command[1:])
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RegistryError(f"mlflow gc failed ({tail}); the versions are deleted but their files "
                            f"are not reclaimed yet: run `python {shown}` on the server side")
    if gc.artifacts_destination:
        _prune_empty_folders(gc.artifacts_destination, [*run_ids, *logged_model_ids])
    log.info("mlflow gc reclaimed %d run(s) and %d logged model(s)", len(run_ids),
             len(logged_model_ids))


def _prune_empty_folders(destination: str, ids: list[str]) -> None:
    """gc removes files, not the folders that held them; drop ours from a local store."""
    parsed = urlparse(destination)
    if parsed.scheme not in ("", "file"):
        return
    root = Path(parsed.path if parsed.scheme else destination)
    for item_id in ids:  # <experiment>/<run_id>/... and <experiment>/models/<model_id>/...
        for folder in [*root.glob(f"*/{item_id}"), *root.glob(f"*/models/{item_id}")]:
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder)
