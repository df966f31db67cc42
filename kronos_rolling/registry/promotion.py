"""Acting on the guard: @staging, @production, @previous_production, rollback.

Every change to a registered model's aliases is one all-or-nothing step list: the
aliases, the version's tags and description, and the audit entry are written in order,
each with retries; if one write still fails, the writes already made are undone in
reverse order, so a failed promotion leaves the model exactly as it was. Writers hold
the model's registry lock, so two jobs on one machine never interleave their writes.

Before a version may serve, `promote`, `rollback` and a guard promotion run the one
verification (tracking/integrity.py: recorded sha256 of every file, finite tensors, the
right asset class); a version that fails it is refused with the reason and nothing moves.

What a version says about itself stays true: its description is a dated log (how it was
trained, the guard's decision, then every later move by hand: promote, rollback, withdrawal,
with who and why), and `latest_decision` / `latest_reason` tags name the newest of them. Of the
guard's figures the version keeps the few tags a person reads (GUARD_VERSION_TAGS); all of them
go to `guard/decision.json` on the training run, linked from the description. The training run
gets the decision too: a `guard_decision` tag and a one-line run description.

@staging after every move of @production (promote, by the guard or by hand, and rollback): the
newest version, unless it is the one in @production (then none). A refusal keeps (or gives) the
refused version @staging; a withdrawal leaves @staging where it is.

Rollback goes, by default, to the newest version older than the one serving (or, after a
withdrawal, than none: the newest) that the guard promoted and that passes verification;
hand-promoted and never-promoted versions, and versions that fail verification, are
skipped with a note. So repeated rollbacks walk back through the guard's promotions.
A rollback and a withdrawal each send an alert (alerts.send_alias_move_alert).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from kronos_rolling.errors import KronosError, ModelError, RegistryError
from kronos_rolling.locks import registry_lock
from kronos_rolling.registry import alerts, history
from kronos_rolling.registry.client import (
    call,
    find_version,
    get_registered_model,
    is_missing,
    list_versions,
)
from kronos_rolling.registry.guard import CalibrationDecision, GuardDecision
from kronos_rolling.registry.history import Actor
from kronos_rolling.tracking.integrity import verify_version
from kronos_rolling.names import (
    CALIBRATION_REASON_TAG,
    CALIBRATION_SERVED_TAG,
    PREVIOUS_PRODUCTION,
    PRODUCTION,
    ROLLED_BACK_TAG,
    STAGING,
    WITHDRAWN_TAG,
    registered_model_name,
    withheld_calibrations,
)
from kronos_rolling.settings import REGISTRY_LOCK_TIMEOUT_S
from kronos_rolling.tracking.context import NOTE_TAG

log = logging.getLogger(__name__)
GUARD_PREFIX = "Guard, "  # starts the guard's paragraph in a version's description
GUARD_DECISION_TAG, GUARD_PROMOTED = "guard_decision", "promoted"  # as GuardDecision.as_tags writes them
# Of GuardDecision.as_tags(), what a version keeps as tags (the rest is in DECISION_ARTIFACT); the
# alert flags are kept only when raised.
GUARD_VERSION_TAGS = ("guard_decision", "guard_reason", "guard_reference", "vs_reference_diff",
                      "vs_reference_diff_lo", "vs_reference_diff_hi", "decision_diff", "decision_diff_lo",
                      "decision_diff_hi", "decision_horizons", "val_span", "val_mae", "val_mae_skill",
                      "production_version")
ALERT_TAGS = ("regression_alert", "negative_skill_alert", "miscalibrated_alert")
DECISION_ARTIFACT = "guard/decision.json"  # on the training run: every figure of the decision
LATEST_DECISION_TAG, LATEST_REASON_TAG = "latest_decision", "latest_reason"  # the newest word on a version


@dataclass(frozen=True)
class AliasState:
    production: str | None
    staging: str | None
    previous_production: str | None


@dataclass(frozen=True)
class AliasMove:
    """What a promotion, refusal or rollback did."""

    name: str
    action: str  # promote | refuse | rollback
    version: str  # the version acted on
    from_version: str | None  # @production before
    to_version: str | None  # @production after
    previous_production: str | None  # @previous_production after
    reason: str
    audit_seq: int | None
    notes: tuple[str, ...] = ()  # what a rollback skipped on its way to the target, and why
    deliveries: tuple[alerts.DeliveryResult, ...] = ()  # the alert of a rollback or withdrawal

    @property
    def promoted(self) -> bool:
        return self.action == history.PROMOTE


def alias_state(client: MlflowClient, name: str) -> AliasState:
    return _aliases(get_registered_model(client, name))


def _aliases(model: RegisteredModel) -> AliasState:
    aliases = model.aliases or {}
    return AliasState(production=aliases.get(PRODUCTION), staging=aliases.get(STAGING),
                      previous_production=aliases.get(PREVIOUS_PRODUCTION))


def production_version(client: MlflowClient, name: str) -> ModelVersion:
    """The version holding @production, or a RegistryError that says why there is none."""
    state = alias_state(client, name)
    if state.production is not None:
        version = find_version(client, name, state.production)
        if version is not None:
            return version
    holders = [e.to_version for e in history.read_history(client, name)
               if e.action in (history.PROMOTE, history.ROLLBACK) and e.to_version]
    if holders and find_version(client, name, holders[-1]) is None:
        raise RegistryError(
            f"{name} has no @production version: v{holders[-1]}, which held it last, has been "
            f"deleted; point it at a live version with `kronos-rolling rollback --asset-class "
            f"{name.removeprefix('kronos-lora-')} --to-version N --reason ...`"
        )
    raise RegistryError(f"{name} has no @production version yet (no candidate has passed the "
                        "guard); the predictor falls back to the pooled adapter meanwhile")


def check_version_usable(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """The version, if it exists, is READY and its artifacts can be listed; else RegistryError."""
    found = find_version(client, name, version)
    if found is None:
        live = ", ".join(f"v{v.version}" for v in list_versions(client, name)) or "none"
        raise RegistryError(f"{name} v{version} does not exist (never registered, or deleted by "
                            f"retention); live versions: {live}")
    if found.status != "READY":
        raise RegistryError(f"{name} v{version} is {found.status}, not READY "
                            f"({found.status_message or 'no message'}); choose another version")
    uri = call(f"resolve artifacts of {name} v{version}",
               client.get_model_version_download_uri, name, str(version))
    try:
        listing = call(f"list artifacts of {name} v{version}", mlflow.artifacts.list_artifacts,
                       artifact_uri=uri, tracking_uri=client.tracking_uri)
    except (MlflowException, OSError) as exc:
        if isinstance(exc, MlflowException) and not is_missing(exc):
            raise
        listing = []
    if not listing:
        raise RegistryError(f"the artifacts of {name} v{version} are missing at {uri}; it cannot "
                            "be served, choose another version")
    return found


def check_version_servable(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    """`check_version_usable`, then the verification (tracking/integrity.py); IntegrityError when it fails."""
    found = check_version_usable(client, name, version)
    verify_version(client, found)
    return found


def rollback_target(client: MlflowClient, name: str, production: str | None) -> tuple[str, list[str]]:
    """(version, notes): the newest version older than `production` (any, when None) that the guard
    promoted and that passes verification; the notes say what was skipped and why."""
    notes = []
    for candidate in list_versions(client, name):  # newest first
        number = candidate.version
        if production is not None and int(number) >= int(production):
            continue
        if candidate.tags.get(GUARD_DECISION_TAG) != GUARD_PROMOTED:
            decided = candidate.tags.get(GUARD_DECISION_TAG)
            notes.append(f"skipped v{number}: " + ("the guard refused it" if decided else
                                                   "the guard never promoted it (promoted by hand, or never)"))
            continue
        try:
            check_version_servable(client, name, number)
        except (ModelError, RegistryError) as exc:
            notes.append(f"skipped v{number}: it fails verification ({exc})")
            continue
        return str(number), notes
    below = f"older than v{production}" if production is not None else "at all"
    raise RegistryError(
        f"{name} has no version {below} that the guard promoted and that passes verification"
        + (f" ({'; '.join(notes)})" if notes else "") + "; pass --to-version N to choose one by hand")


def mark_staging(client: MlflowClient, name: str, version: str | int, *, lock_dir: Path) -> None:
    """Give a newly registered version @staging (the previous holder loses it)."""
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        if find_version(client, name, version) is None:
            raise RegistryError(f"{name} v{version} does not exist; register it first")
        call(f"set @{STAGING} of {name} to v{version}", client.set_registered_model_alias,
             name, STAGING, str(version))


def apply_guard_decision(client: MlflowClient, name: str, version: str | int,
                         decision: GuardDecision, *, lock_dir: Path, actor: Actor | None = None,
                         at: datetime | None = None) -> AliasMove:
    """Write the decision onto the version (tags, description), then act on it.

    Promote: @production moves to the version, @previous_production to the old holder,
    @staging leaves it. Refuse, or pending (awaiting evidence): the version keeps (or gets)
    @staging. Either way one audit entry says who, what, when and why.
    """
    version = str(version)
    actor = actor or Actor.current()
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        target = (check_version_servable(client, name, version) if decision.promote
                  else find_version(client, name, version))
        if target is None:
            raise RegistryError(f"{name} v{version} does not exist; cannot record the guard's "
                                "decision on it")
        model = get_registered_model(client, name)
        state, model_tags = _aliases(model), model.tags
        link = _log_decision(client, target, decision, actor, at)  # the run's record; the registry is untouched
        verdict = "promoted by the guard" if decision.promote else "refused by the guard"
        with _all_or_nothing(client, name) as steps:
            _set_version_tags(steps, client, target, {**guard_version_tags(decision.as_tags()),
                                                      LATEST_DECISION_TAG: verdict, LATEST_REASON_TAG: decision.reason})
            # Keep what training wrote (window, figures) and put the decision after it.
            trained = (target.description or "").split("\n\n" + GUARD_PREFIX)[0].split("Guard: ")[0].strip()
            guard = f"{GUARD_PREFIX}{_when(at)}: {decision.describe()}{link}"
            _set_description(steps, client, target, "\n\n".join(filter(None, [trained, guard])))
            if target.run_id:
                _set_run_tags(steps, client, target.run_id, {GUARD_DECISION_TAG: decision.as_tags()[GUARD_DECISION_TAG],
                                                             NOTE_TAG: run_note(name, version, decision)})
            if decision.promote:
                return _move_production(steps, client, name, state, model_tags, version,
                                        action=history.PROMOTE, reason=decision.reason,
                                        actor=actor, at=at)
            if state.staging != version:
                _set_alias(steps, client, name, STAGING, version, before=state.staging)
            action = history.PENDING if decision.pending else history.REFUSE
            entry = history.new_entry(history.next_seq(model_tags), action,
                                      state.production, version, decision.reason, actor, at)
            _write_audit(steps, client, name, entry)
            return AliasMove(name, action, version, state.production, state.production,
                             state.previous_production, decision.reason, entry.seq)


def guard_version_tags(tags: dict[str, str]) -> dict[str, str]:
    """The guard's tags a version keeps: GUARD_VERSION_TAGS, and the alert flags that were raised."""
    kept = {key: tags[key] for key in GUARD_VERSION_TAGS if key in tags}
    kept.update({key: tags[key] for key in ALERT_TAGS if tags.get(key) == "true"})
    return kept


def run_note(name: str, version: str, decision: GuardDecision) -> str:
    """The training run's one-line description: the decision and the figures it rests on."""
    verdict = "promoted to @production" if decision.promote else "refused, kept in @staging"
    metric = decision.metric
    text = f"{name} v{version}: {verdict}. {metric} {decision.candidate.metric(metric):.6g}"
    if decision.vs_reference is not None and decision.reference:
        text += f"; minus the {decision.reference}'s: {decision.vs_reference.describe().removeprefix(metric + ' ')}"
    if decision.vs_production is not None and decision.production is not None:
        text += (f"; minus production v{decision.production.version or '?'}'s: "
                 f"{decision.vs_production.describe().removeprefix(metric + ' ')}")
    return (text + f"; skill against no change {decision.candidate.val_mae_skill:+.3f}, "
                   f"val_sharpe {decision.candidate.val_sharpe:+.3f}.")


def _log_decision(client: MlflowClient, version: ModelVersion, decision: GuardDecision, actor: Actor,
                  at: datetime | None) -> str:
    """Every figure of the decision as DECISION_ARTIFACT on the version's training run; the link
    the description gives to it ("" for a version without a run)."""
    if not version.run_id:
        return ""
    record = {"registered_model": version.name, "version": version.version, "decided_at": _when(at),
              "decided_by": f"{actor.user}@{actor.host} ({actor.job})", "decision": decision.describe(),
              "tags": decision.as_tags()}
    call(f"log {DECISION_ARTIFACT} of run {version.run_id}", client.log_dict, version.run_id, record,
         DECISION_ARTIFACT)
    experiment = call(f"read run {version.run_id}", client.get_run, version.run_id).info.experiment_id
    return (f" Every figure: [{DECISION_ARTIFACT}](#/experiments/{experiment}/runs/{version.run_id}/artifacts/"
            f"{DECISION_ARTIFACT}) (`runs:/{version.run_id}/{DECISION_ARTIFACT}`).")


def _when(at: datetime | None) -> str:
    return (at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _who(actor: Actor) -> str:
    return f"{actor.user}@{actor.host} ({actor.job})"


def _record_by_hand(steps: "_Steps", client: MlflowClient, version: ModelVersion, decision: str, reason: str,
                    text: str, actor: Actor, at: datetime | None, tags: dict[str, str] | None = None) -> None:
    """A later decision on a version, after the guard's: tags name it the latest, and its
    description gets one dated paragraph (what, who, why)."""
    _set_version_tags(steps, client, version, {**(tags or {}), LATEST_DECISION_TAG: decision,
                                               LATEST_REASON_TAG: reason})
    guard = version.tags.get(GUARD_DECISION_TAG)
    serves = decision in ("promoted by hand", "rolled back to")  # else it stops serving
    overrides = ""
    if guard and serves != (guard == GUARD_PROMOTED):
        overrides = f" This overrides the guard's {'refusal' if serves else 'promotion'} above."
    paragraph = f"{_when(at)}, by {_who(actor)}: {text}{overrides}"
    _set_description(steps, client, version,
                     "\n\n".join(filter(None, [(version.description or "").strip(), paragraph])))


def promote(client: MlflowClient, name: str, version: str | int, reason: str, *, lock_dir: Path,
            actor: Actor | None = None, at: datetime | None = None) -> AliasMove:
    """Move @production to a version outside the guard (an operator's explicit choice)."""
    version, actor = str(version), actor or Actor.current()
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        target = check_version_servable(client, name, version)
        model = get_registered_model(client, name)
        state, model_tags = _aliases(model), model.tags
        with _all_or_nothing(client, name) as steps:
            move = _move_production(steps, client, name, state, model_tags, version,
                                    action=history.PROMOTE, reason=reason, actor=actor, at=at)
            if move.audit_seq is not None:
                _record_by_hand(steps, client, target, "promoted by hand", reason,
                                f"promoted to @production by hand ({history.version_label(state.production)} → "
                                f"v{version}): {reason}.",
                                actor, at)
            return move


def rollback(client: MlflowClient, asset_class: str, to_version: str | int | None = None, *,
             reason: str, lock_dir: Path, actor: Actor | None = None, at: datetime | None = None,
             webhook: str | None = None) -> AliasMove:
    """Point @production back at `to_version` (default: `rollback_target`), say why, and alert."""
    name = registered_model_name(asset_class)
    actor = actor or Actor.current()
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (--reason), it goes into the audit trail")
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        model = get_registered_model(client, name)
        state = _aliases(model)
        notes: list[str] = []
        if to_version is not None:
            target = str(to_version)
            if target == state.production:
                raise RegistryError(f"v{target} already holds {name}@production; nothing to roll back")
            target_version = check_version_servable(client, name, target)
        else:
            target, notes = rollback_target(client, name, state.production)  # verified there
            target_version = find_version(client, name, target)
        for note in notes:
            log.warning("rollback of %s: %s", name, note)
        entries = history.entries_from_tags(model.tags)
        new_previous = _predecessor(client, name, entries, target)
        with _all_or_nothing(client, name) as steps:
            _set_alias(steps, client, name, PRODUCTION, target, before=state.production)
            _set_alias(steps, client, name, PREVIOUS_PRODUCTION, new_previous,
                       before=state.previous_production)
            _set_staging_after_move(steps, client, name, state, target)
            if state.production is not None:
                old = find_version(client, name, state.production)
                if old is not None:
                    _record_by_hand(steps, client, old, "rolled back from", reason,
                                    f"@production rolled back from this version to v{target}: {reason}.",
                                    actor, at, tags={ROLLED_BACK_TAG: reason})
            _record_by_hand(steps, client, target_version, "rolled back to", reason,
                            f"@production rolled back to this version (from "
                            f"{history.version_label(state.production)}): {reason}.", actor, at)
            entry = history.new_entry(history.next_seq(model.tags), history.ROLLBACK,
                                      state.production, target, reason, actor, at)
            _write_audit(steps, client, name, entry)
            move = AliasMove(name, history.ROLLBACK, target, state.production, target,
                             new_previous, reason, entry.seq, tuple(notes))
    delivery = alerts.send_alias_move_alert(alerts.ROLLBACK, name, move.from_version, move.to_version, reason,
                                            webhook, {"audit_seq": move.audit_seq, "skipped": "; ".join(notes)})
    return replace(move, deliveries=(delivery,))


def withdraw_production(client: MlflowClient, asset_class: str, reason: str, *, lock_dir: Path,
                        actor: Actor | None = None, at: datetime | None = None, webhook: str | None = None,
                        alert_fields: dict | None = None) -> AliasMove:
    """Take @production away (the predictor falls back to the pooled adapter), and alert; the
    withdrawn version becomes @previous_production, and `rollback` puts it back."""
    name = registered_model_name(asset_class)
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        model = get_registered_model(client, name)
        state = _aliases(model)
        if state.production is None:
            raise RegistryError(f"{name} has no @production version to withdraw")
        with _all_or_nothing(client, name) as steps:
            _set_alias(steps, client, name, PRODUCTION, None, before=state.production)
            _set_alias(steps, client, name, PREVIOUS_PRODUCTION, state.production, before=state.previous_production)
            withdrawn = find_version(client, name, state.production)
            if withdrawn is not None:
                _record_by_hand(steps, client, withdrawn, "withdrawn", reason,
                                f"withdrawn from @production (the predictor serves pooled meanwhile): {reason}.",
                                actor or Actor.current(), at, tags={WITHDRAWN_TAG: reason})
            entry = history.new_entry(history.next_seq(model.tags), history.WITHDRAW, state.production, None,
                                      reason, actor or Actor.current(), at)
            _write_audit(steps, client, name, entry)
            move = AliasMove(name, history.WITHDRAW, state.production, state.production, None, state.production,
                             reason, entry.seq)
    delivery = alerts.send_alias_move_alert(alerts.WITHDRAWN, name, move.from_version, None, reason, webhook,
                                            {"version": move.version, "audit_seq": move.audit_seq,
                                             **(alert_fields or {})})
    return replace(move, deliveries=(delivery,))


def record_calibration(client: MlflowClient, name: str, version: str | int, asset_class: str,
                       decision: CalibrationDecision, *, lock_dir: Path, actor: Actor | None = None,
                       at: datetime | None = None) -> bool:
    """Whether `version` serves its calibration for `asset_class`, on the version
    (`calibration_served.<class>`, `calibration_reason.<class>`); a change of that state is an
    audit entry too. All or nothing; returns whether the state changed."""
    version = str(version)
    with registry_lock(lock_dir, name, timeout=REGISTRY_LOCK_TIMEOUT_S):
        target = find_version(client, name, version)
        if target is None:
            raise RegistryError(f"{name} v{version} does not exist; cannot record whether its calibration serves")
        was_served = asset_class not in withheld_calibrations(target.tags)
        changed = was_served != decision.served
        with _all_or_nothing(client, name) as steps:
            _set_version_tags(steps, client, target, {CALIBRATION_SERVED_TAG + asset_class: str(decision.served).lower(),
                                                      CALIBRATION_REASON_TAG + asset_class: decision.reason})
            if changed:
                model = get_registered_model(client, name)
                verdict = "served again" if decision.served else "withheld"
                entry = history.new_entry(history.next_seq(model.tags), history.CALIBRATION, version, version,
                                          f"{asset_class} calibration {verdict}: {decision.reason}",
                                          actor or Actor.current(), at)
                _write_audit(steps, client, name, entry)
    return changed


def _move_production(steps: "_Steps", client: MlflowClient, name: str, state: AliasState,
                     model_tags: dict[str, str], version: str, *, action: str, reason: str,
                     actor: Actor, at: datetime | None) -> AliasMove:
    if state.production == version:
        return AliasMove(name, action, version, version, version, state.previous_production,
                         f"v{version} already holds @production", None)
    previous = state.production if state.production is not None else state.previous_production
    if previous == version:  # re-promoting the rollback target: nothing left behind it
        previous = None
    _set_alias(steps, client, name, PRODUCTION, version, before=state.production)
    _set_alias(steps, client, name, PREVIOUS_PRODUCTION, previous,
               before=state.previous_production)
    _set_staging_after_move(steps, client, name, state, version)
    entry = history.new_entry(history.next_seq(model_tags), action, state.production, version,
                              reason, actor, at)
    _write_audit(steps, client, name, entry)
    return AliasMove(name, action, version, state.production, version, previous, reason,
                     entry.seq)


def _set_staging_after_move(steps: "_Steps", client: MlflowClient, name: str, state: AliasState,
                            production: str) -> None:
    """@staging after @production moved to `production`: the newest version unless that is it."""
    newest = list_versions(client, name)[0].version
    _set_alias(steps, client, name, STAGING, None if str(newest) == production else str(newest),
               before=state.staging)


def _predecessor(client: MlflowClient, name: str, entries: list[history.AuditEntry],
                 version: str) -> str | None:
    """The live version that `version` replaced when it was last promoted, if any."""
    for entry in reversed(entries):
        if entry.action == history.PROMOTE and entry.to_version == version:
            before = entry.from_version
            if before and before != version and find_version(client, name, before) is not None:
                return before
            return None
    return None


# ---- all-or-nothing writes -------------------------------------------------------------

class _Steps:
    def __init__(self) -> None:
        self.undo: list[tuple[str, Callable[[], None]]] = []

    def do(self, what: str, action: Callable[[], None], undo: Callable[[], None]) -> None:
        action()
        self.undo.append((what, undo))


@contextmanager
def _all_or_nothing(client: MlflowClient, name: str) -> Iterator[_Steps]:
    steps = _Steps()
    try:
        yield steps
    except BaseException as exc:
        failed = []
        for what, undo in reversed(steps.undo):
            try:
                undo()
            except Exception as undo_exc:  # noqa: BLE001 - reported below, all undos tried
                failed.append(f"{what} ({undo_exc})")
        if failed:
            log.error("could not undo a failed change of %s: %s", name, "; ".join(failed))
            raise RegistryError(
                f"changing {name} failed ({exc}) and undoing it failed too for: "
                f"{'; '.join(failed)}. Check its aliases in the MLflow UI and fix them with "
                "`kronos-rolling rollback --to-version N`"
            ) from exc
        if steps.undo:
            log.warning("changing %s failed; undid %d write(s)", name, len(steps.undo))
        if isinstance(exc, KronosError):
            raise
        if isinstance(exc, MlflowException):
            raise RegistryError(f"changing {name} failed and was undone: {exc.message}") from exc
        raise


def _set_alias(steps: _Steps, client: MlflowClient, name: str, alias: str,
               version: str | None, *, before: str | None) -> None:
    if version == before:
        return

    def point(to: str | None) -> Callable[[], None]:
        if to is None:
            return lambda: call(f"remove @{alias} of {name}",
                                client.delete_registered_model_alias, name, alias)
        return lambda: call(f"set @{alias} of {name} to v{to}",
                            client.set_registered_model_alias, name, alias, to)

    steps.do(f"@{alias} -> {version}", point(version), point(before))


def _set_version_tags(steps: _Steps, client: MlflowClient, version: ModelVersion,
                      tags: dict[str, str]) -> None:
    name, number = version.name, version.version
    for key, value in tags.items():
        old = version.tags.get(key)
        if old == value:
            continue
        undo = (
            (lambda k=key: call(f"remove tag {k} of {name} v{number}",
                                client.delete_model_version_tag, name, number, k))
            if old is None else
            (lambda k=key, o=old: call(f"restore tag {k} of {name} v{number}",
                                       client.set_model_version_tag, name, number, k, o)))
        steps.do(f"tag {key} of v{number}",
                 lambda k=key, v=value: call(f"tag {name} v{number} {k}",
                                             client.set_model_version_tag, name, number, k, v),
                 undo)


def _set_description(steps: _Steps, client: MlflowClient, version: ModelVersion,
                     text: str) -> None:
    name, number, old = version.name, version.version, version.description or ""
    steps.do(f"description of v{number}",
             lambda: call(f"describe {name} v{number}", client.update_model_version,
                          name, number, description=text),
             lambda: call(f"restore description of {name} v{number}",
                          client.update_model_version, name, number, description=old))


def _set_run_tags(steps: _Steps, client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    before = call(f"read run {run_id}", client.get_run, run_id).data.tags
    for key, value in tags.items():
        old = before.get(key)
        undo = ((lambda k=key: call(f"remove tag {k} of run {run_id}", client.delete_tag, run_id, k))
                if old is None else
                (lambda k=key, o=old: call(f"restore tag {k} of run {run_id}", client.set_tag, run_id, k, o)))
        steps.do(f"tag {key} of run {run_id}",
                 lambda k=key, v=value: call(f"tag run {run_id} {k}", client.set_tag, run_id, k, v), undo)


def _write_audit(steps: _Steps, client: MlflowClient, name: str,
                 entry: history.AuditEntry) -> None:
    steps.do(f"audit entry {entry.seq}", lambda: history.write_entry(client, name, entry),
             lambda: history.delete_entry(client, name, entry))
