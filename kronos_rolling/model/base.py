"""Which frozen Kronos base a run uses, and how a version refers to it without copying it.

A base is a predictor plus its tokenizer, each a hub id or a local folder in the hub
format. A folder made by `kronos-rolling model init|pretrain` holds both, as
`DIR/predictor` and `DIR/tokenizer`, and can be passed as one path. Registered versions
carry the reference (hub id + revision, or folder + sha256 digest), never the weights, so
a version's artifacts stay a small fraction of the base.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kronos_rolling.errors import ConfigError, ModelError
from kronos_rolling.files import write_atomic
from kronos_rolling.model.hub import model_source_digest
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.settings import Home

DEFAULT_BASE_MODEL = "NeoQuasar/Kronos-base"
# The tokenizer each released predictor was trained with, and its context length.
HUB_TOKENIZERS = {
    "NeoQuasar/Kronos-mini": "NeoQuasar/Kronos-Tokenizer-2k",
    "NeoQuasar/Kronos-small": "NeoQuasar/Kronos-Tokenizer-base",
    "NeoQuasar/Kronos-base": "NeoQuasar/Kronos-Tokenizer-base",
}
HUB_MAX_CONTEXT = {"NeoQuasar/Kronos-mini": 2048}
DEFAULT_MAX_CONTEXT = 512


def default_base_model(setting: str | None, home: Home) -> str:
    """The base a command uses: the setting (flag or KRONOS_BASE_MODEL), else the base recorded
    in $KRONOS_HOME/config.json (the demo records its pre-trained tiny base there), else the
    released Kronos-base."""
    return setting or str(home_config(home).get("base_model") or DEFAULT_BASE_MODEL)


def home_config(home: Home) -> dict:
    path = home.config_file
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object such as {{\"base_model\": \"DIR\"}}")
    return values


def remember_base_model(home: Home, base_model: str) -> bool:
    """Record the default base of this KRONOS_HOME unless one is recorded already; True if written."""
    values = home_config(home)
    if values.get("base_model"):
        return False
    write_atomic(home.config_file, json.dumps({**values, "base_model": base_model}, indent=2) + "\n")
    return True


@dataclass(frozen=True)
class BaseModelRef:
    """A predictor + tokenizer pair, pinned: hub ids by revision, folders by digest."""

    predictor: str
    tokenizer: str
    revision: str | None = None  # of the predictor's hub repo
    tokenizer_revision: str | None = None
    predictor_digest: str | None = None  # folders only
    tokenizer_digest: str | None = None
    max_context: int = DEFAULT_MAX_CONTEXT

    @classmethod
    def resolve(cls, base_model: str, tokenizer: str | None = None,
                revision: str | None = None, tokenizer_revision: str | None = None,
                max_context: int | None = None) -> "BaseModelRef":
        """Interpret what a user passed: a combined folder, a predictor folder or a hub id."""
        base_model = str(base_model)
        folder = Path(base_model).expanduser()
        if folder.is_dir() and (folder / "predictor").is_dir():
            predictor = str((folder / "predictor").resolve())
            tokenizer = tokenizer or str((folder / "tokenizer").resolve())
        elif folder.is_dir():
            predictor = str(folder.resolve())
            if tokenizer is None:
                raise ModelError(
                    f"{folder} holds a predictor only; pass its tokenizer too (--tokenizer DIR_OR_ID), "
                    "or a folder with predictor/ and tokenizer/ as written by `kronos-rolling model init`"
                )
        else:
            predictor = base_model
            if tokenizer is None:
                if base_model not in HUB_TOKENIZERS:
                    raise ModelError(
                        f"base model {base_model!r} is neither a folder here nor a released Kronos model "
                        f"({', '.join(HUB_TOKENIZERS)}); pass a folder, or a hub id with --tokenizer"
                    )
                tokenizer = HUB_TOKENIZERS[base_model]
        tokenizer_folder = Path(tokenizer).expanduser()
        if tokenizer_folder.is_dir():
            tokenizer = str(tokenizer_folder.resolve())
        return cls(
            predictor=predictor,
            tokenizer=tokenizer,
            revision=revision,
            tokenizer_revision=tokenizer_revision,
            predictor_digest=_digest_if_folder(predictor),
            tokenizer_digest=_digest_if_folder(tokenizer),
            max_context=max_context or HUB_MAX_CONTEXT.get(predictor, DEFAULT_MAX_CONTEXT),
        )

    def load(self) -> tuple[Kronos, KronosTokenizer]:
        """Load both, refusing folders whose weights changed since this reference was made."""
        for path, recorded in ((self.predictor, self.predictor_digest), (self.tokenizer, self.tokenizer_digest)):
            if recorded is not None:
                if not Path(path).is_dir():
                    raise ModelError(f"base model folder {path} is gone; restore it or retrain against a new base")
                actual = model_source_digest(path)
                if actual != recorded:
                    raise ModelError(
                        f"base model folder {path} has changed since the adapter was trained "
                        f"(sha256 {actual[:12]} != recorded {recorded[:12]}); restore the original weights"
                    )
        model = Kronos.from_pretrained(self.predictor, revision=self.revision)
        tokenizer = KronosTokenizer.from_pretrained(self.tokenizer, revision=self.tokenizer_revision)
        return model, tokenizer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BaseModelRef":
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})

    def describe(self) -> str:
        if self.predictor_digest:
            return f"{self.predictor} (sha256 {self.predictor_digest[:12]})"
        return f"{self.predictor}@{self.revision or 'main'}"


def _digest_if_folder(path: str) -> str | None:
    return model_source_digest(path) if Path(path).is_dir() else None
