"""Acting on retention: delete old versions and reclaim their storage, keep their training runs.

A deleted version's files are the ones it serves: its logged model (the pyfunc model
folder with the adapter bundle) and the copy of the bundle its training run logged as the
`adapter` artifact. Retention deletes exactly those files through the tracking server
(its artifact proxy, so any store it serves, local or S3, and no database access), then
the version and the logged model. The run stays, with its params, metrics, tags and every
other artifact (plots, metadata.json): the MLflow UI still compares every month. The run
gets a `kronos.retention` tag saying which files went and why.

Files are only deleted when no surviving version (of any registered model) comes from the
same run or logged model.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

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
from kronos_rolling.names import registered_model_name
from kronos_rolling.registry.retention import VersionInfo, choose_versions_to_delete
from kronos_rolling.settings import REGISTRY_LOCK_TIMEOUT_S, Thresholds
from kronos_rolling.tracking.adapters import ADAPTER_ARTIFACT
from kronos_rolling.tracking.server import redact

log = logging.getLogger(__name__)

_MODEL_ID = re.compile(r"(?:^models:/|/models/)(m-[0-9a-f]+)")


RETENTION_TAG = "kronos.retention"  # run tag: its version's files were deleted by retention


@dataclass
class RetentionReport:
    name: str
    keep: int
    kept: list[int]
    deleted: list[int]
    dry_run: bool
    runs_trimmed: list[str] = field(default_factory=list)  # runs kept, their adapter files deleted
    logged_models_deleted: list[str] = field(default_factory=list)
    reclaimed: bool = False  # the deleted versions' files are gone

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        deleted = ", ".join(f"v{v}" for v in self.deleted) or "nothing"
        kept = ", ".join(f"v{v}" for v in self.kept) or "none"
        text = f"{self.name}: {verb} {deleted}; kept {kept} (newest {self.keep} + aliased)"
        if self.deleted and not self.dry_run:
            text += (f"; storage reclaimed: {len(self.logged_models_deleted)} logged model(s) and the adapter "
                     f"files of {len(self.runs_trimmed)} run(s) deleted; the runs' params, metrics, tags and "
                     "plots are kept")
        return text


def apply_retention(client: MlflowClient, asset_class: str, keep: int = Thresholds.keep_versions, *,
                    lock_dir: Path, dry_run: bool = False, actor: Actor | None = None,
                    at: datetime | None = None) -> RetentionReport:
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
                _delete_version(client, name, by_number[number], set(doomed), report, at)
                done.append(number)
        finally:
            if done:  # record what went, also when a later deletion failed
                entry = history.new_entry(
                    history.next_seq(model.tags), history.RETENTION, None, None,
                    f"deleted {', '.join(f'v{v}' for v in done)} and their files (keep newest {keep} + aliased; "
                    "training runs kept)", actor or Actor.current(), at)
                history.write_entry(client, name, entry)
        report.reclaimed = True
    return report


def _delete_version(client: MlflowClient, name: str, version, doomed: set[int],
                    report: RetentionReport, at: datetime | None) -> None:
    run_id = version.run_id or None
    model_ids = _logged_models_of(client, version)
    shared = False
    if run_id:
        siblings = call(f"find versions from run {run_id}", client.search_model_versions,
                        f"run_id = '{run_id}'")
        shared = any(not (s.name == name and int(s.version) in doomed) for s in siblings)
    call(f"delete {name} v{version.version}", client.delete_model_version, name, version.version)
    if shared:
        log.info("%s v%s: run %s also backs a kept version; keeping its files", name,
                 version.version, run_id)
        return
    for model_id in model_ids:
        try:
            location = call(f"read logged model {model_id}", client.get_logged_model, model_id).artifact_location
        except MlflowException as exc:
            if not is_missing(exc):
                raise
        else:
            _delete_files(client, location, None, f"the files of logged model {model_id}")
        _soft_delete(f"delete logged model {model_id}", client.delete_logged_model, model_id)
        report.logged_models_deleted.append(model_id)
    if run_id:
        try:
            run = call(f"read run {run_id}", client.get_run, run_id)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
            return
        _delete_files(client, run.info.artifact_uri, ADAPTER_ARTIFACT, f"the adapter files of run {run_id}")
        when = (at or datetime.now(timezone.utc)).isoformat(timespec="seconds")
        call(f"tag run {run_id}", client.set_tag, run_id, RETENTION_TAG,
             f"{ADAPTER_ARTIFACT}/ and the model files deleted with {name} v{version.version} on {when}; "
             "params, metrics, tags and plots kept")
        report.runs_trimmed.append(run_id)


def _delete_files(client: MlflowClient, root: str, path: str | None, what: str) -> None:
    """Delete `path` under the artifact root `root` (all of it when None) through the tracking server."""
    repository = get_artifact_repository(root, tracking_uri=client.tracking_uri)
    try:
        call(f"delete {what}", repository.delete_artifacts, path)
    except FileNotFoundError:
        pass  # already gone
    except MlflowException as exc:
        if not is_missing(exc):
            raise RegistryError(f"could not delete {what} at {redact(root)}: {exc.message}; the version is "
                                "deleted, its files are not: run retention again") from exc


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
