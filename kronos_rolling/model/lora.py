"""LoRA adapters (through peft) on a frozen Kronos predictor, and the adapter bundle format.

An adapter bundle is one folder:
    adapter_config.json, adapter_model.safetensors   peft's own adapter format
    event_embedding.safetensors                       the EventEmbedding trained with it
    event_vocab.json                                  {event type: id} supplied by the caller
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

from kronos_rolling.errors import ModelError
from kronos_rolling.model.config import LoraSettings
from kronos_rolling.model.events import NO_EVENT, EventEmbedding
from kronos_rolling.model.kronos import Kronos

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EVENT_EMBEDDING = "event_embedding.safetensors"
EVENT_VOCAB = "event_vocab.json"
BUNDLE_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, EVENT_EMBEDDING, EVENT_VOCAB)


def peft_config(settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_pattern(),
        bias="none",
    )


def attach_lora(model: Kronos, settings: LoraSettings | None = None) -> PeftModel:
    """Wrap `model` in fresh LoRA adapters (B = 0, so outputs start equal to the base's).

    peft injects the LoRA layers into `model` in place and freezes every base weight.
    """
    if not isinstance(model, Kronos):
        raise ModelError(f"LoRA attaches to a Kronos predictor, got {type(model).__name__}")
    return get_peft_model(model, peft_config(settings or LoraSettings()))


def _check_vocab(event_vocab: dict, event_embedding: EventEmbedding) -> dict[str, int]:
    if not isinstance(event_vocab, dict):
        raise ModelError(f"event_vocab must be a dict of event type -> id, got {type(event_vocab).__name__}")
    checked: dict[str, int] = {}
    for name, event_id in event_vocab.items():
        if not isinstance(name, str) or isinstance(event_id, bool) or not isinstance(event_id, int):
            raise ModelError(f"event_vocab entry {name!r}: {event_id!r} must map a string to an integer id")
        if not NO_EVENT <= event_id < event_embedding.num_event_types:
            raise ModelError(
                f"event_vocab entry {name!r} has id {event_id}, outside the embedding's "
                f"0..{event_embedding.num_event_types - 1} (0 = no event)"
            )
        checked[name] = event_id
    return checked


def save_adapter_bundle(peft_model: PeftModel, event_embedding: EventEmbedding, event_vocab: dict,
                        out_dir: str | os.PathLike) -> Path:
    """Write an adapter bundle to `out_dir` (must be new or empty); nothing is left behind on failure."""
    out_dir = Path(out_dir)
    if not isinstance(peft_model, PeftModel):
        raise ModelError(f"save_adapter_bundle needs the peft model returned by attach_lora, got {type(peft_model).__name__}")
    vocab = _check_vocab(event_vocab, event_embedding)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(f"{out_dir} already exists and is not an empty folder; choose a new folder for the bundle")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        peft_model.save_pretrained(str(staging))
        event_embedding.save(staging / EVENT_EMBEDDING)
        (staging / EVENT_VOCAB).write_text(json.dumps(vocab, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def load_adapter_bundle(base_model: Kronos, bundle_dir: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False) -> tuple[PeftModel, EventEmbedding, dict[str, int]]:
    """Load a bundle onto `base_model` (LoRA layers are injected into it in place).

    is_trainable=True keeps the adapter trainable, e.g. to warm-start a fine-tune.
    """
    bundle_dir = Path(bundle_dir)
    missing = [name for name in BUNDLE_FILES if not (bundle_dir / name).is_file()]
    if missing:
        raise ModelError(
            f"adapter bundle {bundle_dir} lacks {', '.join(missing)}; a bundle holds {', '.join(BUNDLE_FILES)} "
            f"(as written by save_adapter_bundle)"
        )
    event_embedding = EventEmbedding.load(bundle_dir / EVENT_EMBEDDING)
    if event_embedding.d_model != base_model.d_model:
        raise ModelError(
            f"adapter bundle {bundle_dir} was trained on a predictor with d_model {event_embedding.d_model}, "
            f"this base has {base_model.d_model}; load it onto the base model it was trained from"
        )
    try:
        vocab = json.loads((bundle_dir / EVENT_VOCAB).read_text())
    except ValueError as exc:
        raise ModelError(f"{bundle_dir / EVENT_VOCAB} is not valid JSON ({exc})") from exc
    vocab = _check_vocab(vocab, event_embedding)
    try:
        peft_model = PeftModel.from_pretrained(base_model, str(bundle_dir), adapter_name=adapter_name,
                                               is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot load the LoRA adapter of {bundle_dir} onto this base model ({exc}); "
            f"load it onto the base model it was trained from"
        ) from exc
    # peft only warns when adapted layers find no saved weights (e.g. a deeper base): refuse instead.
    with safe_open(str(bundle_dir / ADAPTER_WEIGHTS), framework="pt") as saved:
        saved_keys = set(saved.keys())
    expected_keys = set(get_peft_model_state_dict(peft_model, adapter_name=adapter_name))
    if saved_keys != expected_keys:
        unmatched = sorted(saved_keys ^ expected_keys)
        raise ModelError(
            f"adapter of {bundle_dir} does not fit this base model: {len(unmatched)} adapter tensor(s) "
            f"unmatched (e.g. {unmatched[0]}); load it onto the base model it was trained from"
        )
    if not is_trainable:
        event_embedding.requires_grad_(False)
    return peft_model, event_embedding, vocab


BASE_ROWS = "__base__"
"""The adapter name peft reads as "no adapter" in a mixed batch (`rows_by_adapter`)."""


@contextlib.contextmanager
def rows_by_adapter(peft_model: PeftModel, names: list[str], paths: list[int]):
    """Within the block, each row of a forward runs its own adapter: peft's mixed-batch LoRA
    (the base products are shared; each adapter's low-rank update is added to its own rows).

    names: the adapter of each series (BASE_ROWS: the bare base); paths: each series' rows.
    A generation feeds either one row per series (a lookback shared by its paths) or one
    row per path, so the names each LoRA layer receives follow the batch it is given.
    """
    unknown = sorted(set(names) - set(peft_model.peft_config) - {BASE_ROWS})
    if unknown:
        raise ModelError(f"no adapter named {', '.join(unknown)} is loaded; loaded: {sorted(peft_model.peft_config)}")
    by_batch = {len(names): list(names), sum(paths): [n for n, count in zip(names, paths) for _ in range(count)]}

    def route(module, args, kwargs):
        batch = (args[0] if args else kwargs["x"]).shape[0]
        if batch not in by_batch:
            raise ModelError(f"a LoRA layer got a batch of {batch} rows; the routed batch has {sorted(by_batch)}")
        return args, {**kwargs, "adapter_names": by_batch[batch]}

    handles = [module.register_forward_pre_hook(route, with_kwargs=True)
               for module in peft_model.modules() if isinstance(module, LoraLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
