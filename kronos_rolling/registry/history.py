"""The audit trail: who moved which alias, from where to where, when and why.

Each entry is one registered-model tag `kronos.audit.NNNNNN` holding JSON, so the trail
survives the deletion of any version, and an entry is written (or undone) in one call.
Writers hold the model's registry lock, so numbering never collides on one machine.

Every write (and undo) of an entry also rewrites the registered model's description: what
the model is, then the trail as a table a person reads on the model's page in the MLflow UI
(newest first: when, action, from -> to, who, why), rendered from the tags.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mlflow import MlflowClient

from kronos_rolling.locks import current_user
from kronos_rolling.registry.client import call, get_registered_model
from kronos_rolling.names import AUDIT_TAG_PREFIX

PROMOTE = "promote"
ROLLBACK = "rollback"
WITHDRAW = "withdraw"
REFUSE = "refuse"
PENDING = "pending"  # the guard could not judge yet: the version waits at @staging for evidence
CADENCE = "cadence"
CALIBRATION = "calibration"  # a version's calibration for a class withheld, or served again
RETENTION = "retention"


@dataclass(frozen=True)
class Actor:
    """Who acts: the OS user, the host, and the job (cron job id, MLflow run, or the CLI)."""

    user: str
    host: str
    job: str

    @classmethod
    def current(cls, job: str | None = None) -> "Actor":
        """This process; `job` names it (Settings.job: KRONOS_JOB or the `mlflow run` run), else its pid."""
        return cls(user=current_user(), host=socket.gethostname(), job=job or f"pid:{os.getpid()}")


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    action: str
    from_version: str | None
    to_version: str | None
    reason: str
    user: str
    host: str
    job: str
    at: str  # ISO-8601 UTC

    @property
    def tag_key(self) -> str:
        return f"{AUDIT_TAG_PREFIX}{self.seq:06d}"

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "seq"}, sort_keys=True)

    @classmethod
    def from_tag(cls, key: str, value: str) -> "AuditEntry":
        raw = json.loads(value)
        return cls(seq=int(key[len(AUDIT_TAG_PREFIX):]), **raw)


def new_entry(seq: int, action: str, from_version: str | None, to_version: str | None,
              reason: str, actor: Actor, at: datetime | None = None) -> AuditEntry:
    at = at or datetime.now(timezone.utc)
    return AuditEntry(seq=seq, action=action, from_version=from_version, to_version=to_version,
                      reason=reason, user=actor.user, host=actor.host, job=actor.job,
                      at=at.astimezone(timezone.utc).isoformat(timespec="seconds"))


def entries_from_tags(tags: dict[str, str]) -> list[AuditEntry]:
    """Audit entries among a registered model's tags, oldest first (unreadable ones skipped)."""
    entries = []
    for key, value in tags.items():
        if key.startswith(AUDIT_TAG_PREFIX):
            try:
                entries.append(AuditEntry.from_tag(key, value))
            except (ValueError, TypeError):
                continue  # someone edited a tag by hand; the rest of the trail still reads
    return sorted(entries, key=lambda e: e.seq)


def next_seq(tags: dict[str, str]) -> int:
    numbers = [int(k[len(AUDIT_TAG_PREFIX):]) for k in tags
               if k.startswith(AUDIT_TAG_PREFIX) and k[len(AUDIT_TAG_PREFIX):].isdigit()]
    return max(numbers, default=0) + 1


def read_history(client: MlflowClient, name: str) -> list[AuditEntry]:
    return entries_from_tags(get_registered_model(client, name).tags)


def write_entry(client: MlflowClient, name: str, entry: AuditEntry) -> None:
    call(f"write audit entry {entry.seq} of {name}", client.set_registered_model_tag,
         name, entry.tag_key, entry.to_json())
    rewrite_description(client, name)


def delete_entry(client: MlflowClient, name: str, entry: AuditEntry) -> None:
    call(f"remove audit entry {entry.seq} of {name}", client.delete_registered_model_tag,
         name, entry.tag_key)
    rewrite_description(client, name)


MODEL_SUMMARY = "LoRA adapter + event embedding of Kronos, kept current by kronos-rolling."
TABLE_ROWS = 25  # newest entries in the description; `kronos-rolling history` prints them all


def rewrite_description(client: MlflowClient, name: str) -> None:
    """The registered model's description, from its audit tags as they are now."""
    entries = entries_from_tags(get_registered_model(client, name).tags)
    call(f"describe {name}", client.update_registered_model, name, description=trail_table(name, entries))


def trail_table(name: str, entries: list[AuditEntry]) -> str:
    """Markdown: what the model is, then the newest TABLE_ROWS entries, newest first."""
    label = name.removeprefix("kronos-lora-")
    shown = entries[::-1][:TABLE_ROWS]
    older = (f" ({len(entries) - len(shown)} older: `kronos-rolling history --asset-class {label}`)"
             if len(entries) > len(shown) else "")
    lines = [MODEL_SUMMARY, "", f"**Audit trail**, newest first{older}. Raw entries: tags `kronos.audit.NNNNNN`.",
             "", "| # | when (UTC) | action | what moved | who | why |", "|---|---|---|---|---|---|"]
    for e in shown:
        lines.append(f"| {e.seq} | {e.at.replace('T', ' ').removesuffix('+00:00')} | {e.action} | {what_moved(e)} | "
                     f"{_cell(f'{e.user}@{e.host} ({e.job})')} | {_cell(e.reason)} |")
    if not shown:
        lines.append("| | | no entries yet | | | |")
    return "\n".join(lines)


def what_moved(entry: AuditEntry) -> str:
    if entry.action in (PROMOTE, ROLLBACK, WITHDRAW):
        return f"@production {version_label(entry.from_version)} → {version_label(entry.to_version)}"
    if entry.action == REFUSE:
        return f"{version_label(entry.to_version)} refused; @production stays {version_label(entry.from_version)}"
    if entry.action == CALIBRATION:
        return f"calibration of {version_label(entry.to_version)}"
    return ""


def version_label(version: str | None) -> str:
    """`v2`, or `none` where no version held the alias."""
    return f"v{version}" if version else "none"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def format_history(entries: list[AuditEntry]) -> str:
    """A table for the terminal, oldest first."""
    if not entries:
        return "no audit entries yet"
    header = ("#", "when (UTC)", "action", "from", "to", "who", "job", "why")
    rows = [(str(e.seq), e.at, e.action, _v(e.from_version), _v(e.to_version),
             f"{e.user}@{e.host}", e.job, e.reason) for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
    return "\n".join(lines)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "-"
