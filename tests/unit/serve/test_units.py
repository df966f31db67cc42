"""The predictor service's small decisions and file checks, on real files, no servers."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import pytest
from support.serve import build_bundle

from kronos_rolling.errors import ConfigError, DataError, ModelError
from kronos_rolling.model.base import BaseModelRef
from kronos_rolling.serve.cache import VersionCache
from kronos_rolling.files import (
    bundle_digest,
    check_digest,
    check_formats,
    check_sizes,
    file_manifest,
)
from kronos_rolling.serve.selection import (
    BASE,
    Candidate,
    asset_class_of,
    choose,
    registry_freshness,
    same_base,
)
from kronos_rolling.serve.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRejected,
    check_signature,
    relevant_model,
    signature,
)
from kronos_rolling.settings import RequestLimits

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)


def cand(label: str, version: str = "1", mae: float | None = 0.02, **extra) -> Candidate:
    return Candidate(label, f"kronos-lora-{label}", version, mae, **extra)


def signed(body: bytes, secret: str = "s3cret", sent: int = 1_800_000_000, delivery: str = "d-7") -> dict:
    return {DELIVERY_ID_HEADER: delivery, TIMESTAMP_HEADER: str(sent),
            SIGNATURE_HEADER: signature(secret, delivery, str(sent), body)}


@pytest.fixture(scope="module")
def bundle(tiny_base, tmp_path_factory):
    return build_bundle(tiny_base, tmp_path_factory.mktemp("units") / "bundle", seed=5)


def test_a_class_with_its_own_production_version_is_served_by_it():
    choice = choose("crypto", {"crypto": cand("crypto", "4"), "pooled": cand("pooled")})
    assert (choice.label, choice.candidate.version, choice.fallback, choice.warning) == ("crypto", "4", None, None)
    assert choice.alias == "production"


def test_a_class_without_one_falls_back_to_pooled_and_says_why():
    choice = choose("equity", {"crypto": cand("crypto"), "pooled": cand("pooled", "2")})
    assert choice.label == "pooled" and choice.candidate.version == "2"
    assert choice.fallback == "kronos-lora-equity has no @production version" and choice.warning is None
    refused = choose("equity", {"pooled": cand("pooled")}, unavailable={"equity": "kronos-lora-equity v3 was refused"})
    assert refused.fallback == "kronos-lora-equity v3 was refused"


def test_without_pooled_the_bare_base_answers_with_a_warning():
    choice = choose("forex_commodity", {"crypto": cand("crypto")})
    assert choice.label == BASE and choice.candidate is None and choice.alias is None
    assert "bare base model" in choice.warning and "kronos-lora-pooled has no @production" in choice.warning


@pytest.mark.parametrize("mae, pooled_mae, guarded", [(0.0221, 0.02, True), (0.0219, 0.02, False),
                                                      (0.03, None, False), (None, 0.02, False)])
def test_the_optional_inference_guard_prefers_pooled_when_the_class_is_over_10_percent_worse(mae, pooled_mae,
                                                                                           guarded):
    available = {"crypto": cand("crypto", mae=mae), "pooled": cand("pooled", mae=pooled_mae)}
    assert choose("crypto", available).label == "crypto"  # off by default
    choice = choose("crypto", available, guard_ratio=1.1)
    assert choice.label == ("pooled" if guarded else "crypto")
    if guarded:
        assert choice.fallback.startswith("inference guard: kronos-lora-crypto v1 val_mae 0.0221 is more than 10%")


def test_the_guard_prefers_the_pooled_figure_measured_on_the_class_span_when_it_is_the_served_pooled():
    own = cand("crypto", mae=0.05, pooled_version="7", pooled_val_mae=0.048)
    assert choose("crypto", {"crypto": own, "pooled": cand("pooled", "7", mae=0.01)}, guard_ratio=1.1).label == "crypto"
    assert choose("crypto", {"crypto": own, "pooled": cand("pooled", "8", mae=0.01)}, guard_ratio=1.1).label == "pooled"


def test_symbols_are_classified_with_overrides_first_and_unknown_ones_are_refused_clearly():
    assert asset_class_of("BTCUSDT") == "crypto"
    assert asset_class_of("EURUSD") == "forex_commodity"
    assert asset_class_of("AAPL") == "equity"
    assert asset_class_of("MYCOIN", {"MYCOIN": "crypto"}) == "crypto"
    with pytest.raises(DataError, match="asset_classes.csv"):
        asset_class_of("ZZZZZZZZ")


def test_same_base_compares_folders_by_digest_and_hub_ids_by_revision(tiny_base, tmp_path):
    ref = BaseModelRef.resolve(str(tiny_base))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_base, moved)
    assert same_base(ref, BaseModelRef.resolve(str(moved)))  # same weights elsewhere
    (moved / "predictor" / "config.json").write_text(
        (moved / "predictor" / "config.json").read_text().replace("}", ' }'))
    assert not same_base(ref, BaseModelRef.resolve(str(moved)))
    hub = BaseModelRef.resolve("NeoQuasar/Kronos-small")
    assert same_base(hub, BaseModelRef.resolve("NeoQuasar/Kronos-small"))
    assert not same_base(hub, BaseModelRef.resolve("NeoQuasar/Kronos-small", revision="abc123"))
    assert not same_base(hub, ref)


def test_the_registry_is_stale_after_a_failed_read_or_when_polling_stopped():
    assert registry_freshness(None, None, NOW, 30).stale
    assert not registry_freshness(NOW - timedelta(seconds=20), None, NOW, 30).stale
    failed = registry_freshness(NOW - timedelta(seconds=20), NOW - timedelta(seconds=5), NOW, 30)
    assert failed.stale and failed.reason.endswith(f"unreachable since {(NOW - timedelta(seconds=5)).isoformat()}")
    assert registry_freshness(NOW - timedelta(seconds=120), None, NOW, 30).stale


def test_request_limits_name_the_limit_and_the_fix():
    limits = RequestLimits(min_bars=16, max_bars=512, max_pred_len=64, max_samples=8, max_batch_items=4)
    limits.check_bars("BTCUSD", 16)
    limits.check_options(64, 8)
    with pytest.raises(DataError, match="BTCUSD: 15 bar.* at least 16"):
        limits.check_bars("BTCUSD", 15)
    with pytest.raises(DataError, match="send only the last 512"):
        limits.check_bars("BTCUSD", 513)
    with pytest.raises(ConfigError, match="limit of 64"):
        limits.check_options(65, 1)
    with pytest.raises(ConfigError, match="at most 8 sample"):
        limits.check_options(4, 9)
    with pytest.raises(ConfigError, match="split the batch"):
        limits.check_batch(5)


def test_webhook_signatures_follow_mlflow_and_reject_forgery_and_replay():
    body = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "kronos-lora-crypto"}}'
    check_signature("s3cret", signed(body), body, 1_800_000_010, 300)
    with pytest.raises(WebhookRejected, match="does not match"):
        check_signature("s3cret", signed(body, secret="other"), body, 1_800_000_010, 300)
    with pytest.raises(WebhookRejected, match="does not match"):
        check_signature("s3cret", signed(body), body + b" ", 1_800_000_010, 300)
    with pytest.raises(WebhookRejected, match="replayed"):
        check_signature("s3cret", signed(body), body, 1_800_001_000, 300)
    with pytest.raises(WebhookRejected, match="unsigned"):
        check_signature("s3cret", {}, body, 1_800_000_010, 300)


def test_only_events_about_our_models_trigger_a_refresh():
    assert relevant_model({"entity": "model_version_alias", "action": "created",
                           "data": {"name": "kronos-lora-equity", "alias": "production", "version": "3"}}) \
        == "kronos-lora-equity"
    assert relevant_model({"entity": "model_version_alias", "action": "deleted",
                           "data": {"name": "kronos-lora-pooled", "alias": "production"}}) == "kronos-lora-pooled"
    assert relevant_model({"entity": "model_version_alias", "data": {"name": "fraud-model"}}) is None
    assert relevant_model({"entity": "prompt_alias", "data": {"name": "kronos-lora-crypto"}}) is None
    assert relevant_model(["not", "a", "dict"]) is None


def test_a_truncated_or_missing_file_fails_the_size_check(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    listed = {name: entry["size"] for name, entry in file_manifest(copy).items()}
    check_sizes(copy, listed, "v1")
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match="adapter_model.safetensors has .* bytes but the registry lists"):
        check_sizes(copy, listed, "v1")
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        check_formats(copy, "v1")
    shutil.copy(bundle / "adapter_model.safetensors", weights)
    (copy / "event_vocab.json").unlink()
    with pytest.raises(ModelError, match="event_vocab.json is missing"):
        check_sizes(copy, listed, "v1")


def test_a_flipped_byte_fails_the_digest_and_garbled_json_the_format_check(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    digest = bundle_digest(copy)
    check_digest(file_manifest(copy), digest, "v1")
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    check_formats(copy, "v1")  # still a well-formed file: only the digest can tell
    with pytest.raises(ModelError, match="does not match the digest recorded at registration"):
        check_digest(file_manifest(copy), digest, "v1")
    (copy / "metadata.json").write_text('{"base": ')
    with pytest.raises(ModelError, match="metadata.json is not valid JSON"):
        check_formats(copy, "v1")


def test_the_cache_keeps_verified_versions_and_refuses_a_corrupt_one(bundle, tmp_path):
    cache = VersionCache(tmp_path / "cache", keep=2)
    stored = cache.store("kronos-lora-crypto", "3", bundle, tags={"val_mae": "0.02"}, run_id="r1",
                         expected_digest=bundle_digest(bundle))
    assert stored.digest == bundle_digest(bundle)
    loaded = cache.load("kronos-lora-crypto", "3", expected_digest=bundle_digest(bundle))
    assert bundle_digest(loaded.bundle_dir) == bundle_digest(bundle)
    with pytest.raises(ModelError, match="differs from the registry's"):
        cache.load("kronos-lora-crypto", "3", expected_digest="0" * 64)
    with pytest.raises(ModelError, match="does not match the digest recorded"):
        cache.store("kronos-lora-crypto", "4", bundle, expected_digest="0" * 64)
    assert not cache.has("kronos-lora-crypto", "4")  # nothing half-written is left
    assert [p.name for p in (tmp_path / "cache" / "kronos-lora-crypto").iterdir()] == ["3"]

    weights = loaded.bundle_dir / "event_embedding.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="event_embedding.safetensors does not match its recorded sha256"):
        cache.load("kronos-lora-crypto", "3")
    (loaded.bundle_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="unexpected \\['extra.bin'\\]"):
        cache.load("kronos-lora-crypto", "3")
    with pytest.raises(ModelError, match="not in the cache"):
        cache.load("kronos-lora-crypto", "9")

    cache.record_resolved("crypto", "kronos-lora-crypto", "3", "production", NOW)
    assert cache.resolved()["crypto"]["version"] == "3"
    cache.forget_resolved("crypto")
    assert cache.resolved() == {}
    for version in ("5", "6", "7"):
        cache.store("kronos-lora-crypto", version, bundle)
    assert cache.prune("kronos-lora-crypto", keep_versions={"3"}) == ["5"]
    assert sorted(p.name for p in (tmp_path / "cache" / "kronos-lora-crypto").iterdir()) == ["3", "6", "7"]
    (tmp_path / "cache" / "resolved.json").write_text("{not json")
    with pytest.raises(ModelError, match="delete it"):
        cache.resolved()
    json.dumps(stored.manifest)  # the manifest is plain JSON


def test_the_service_listens_on_loopback_unless_told_otherwise():
    from kronos_rolling.cli.serve import COMMANDS

    serve = next(command for command in COMMANDS if command.name == "serve")
    host = next(option for option in serve.params if option.name == "host")
    assert host.default == "127.0.0.1"
    assert serve.make_context("serve", []).params["host"] == "127.0.0.1"
