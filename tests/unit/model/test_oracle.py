"""Our Kronos against the released implementation (`kronos-model-arch`, import name `model`).

Weights are built by the reference with a fixed seed and saved by its own
`save_pretrained` (PyTorchModelHubMixin: config.json of constructor kwargs +
model.safetensors), exactly like the released hub folders, then loaded into ours with
strict loading. Logits must agree to 1e-5 in float32 and greedy forecasts must agree.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata

import pytest
import torch

from kronos_rolling.model.config import MODEL_SIZES, KronosConfig, TokenizerConfig
from kronos_rolling.model.generate import generate
from kronos_rolling.model.kronos import Kronos
from kronos_rolling.model.tokenizer import KronosTokenizer, tokenizer_loss

# The oracle is part of the tests, never optional: missing, it fails the run (a skip would read as a
# pass). It cannot sit in pyproject's `test` extra: its metadata pins old releases of libraries we
# need newer (huggingface_hub==0.33.1, matplotlib==3.9.3, safetensors==0.6.2, tqdm==4.67.1,
# einops==0.8.1), which pip would resolve by downgrading them for the tests only, and pip has no
# per-requirement --no-deps. So `make setup` installs it with --no-deps; what it imports is in the extra.
ORACLE = "kronos-model-arch"
ORACLE_VERSION = "0.1.0"


def _oracle():
    """The reference implementation, or why it cannot be imported."""
    try:
        installed = importlib.metadata.version(ORACLE)
    except importlib.metadata.PackageNotFoundError:
        return None, "not installed"
    if installed != ORACLE_VERSION:
        return None, f"{installed} is installed"
    try:
        return importlib.import_module("model"), None
    except ImportError as exc:
        return None, f"cannot be imported: {exc}"


reference, missing = _oracle()
if missing:
    pytest.fail(f"the reference oracle {ORACLE}=={ORACLE_VERSION} (import name `model`) {missing}; `make setup` "
                f"installs it, or: .venv/bin/python -m pip install --no-deps '{ORACLE}=={ORACLE_VERSION}'",
                pytrace=False)


torch.set_num_threads(2)


TINY = MODEL_SIZES["tiny"]


# Kronos-mini's architecture (4 x 256, 10-bit tokens) with a lighter tokenizer than
# Tokenizer-base to keep the test fast; the context is 2048 as for Kronos-mini.
MINI_PREDICTOR = MODEL_SIZES["mini"].predictor


MINI_TOKENIZER = dataclasses.replace(MODEL_SIZES["mini"].tokenizer, d_model=64, ff_dim=128, n_enc_layers=2, n_dec_layers=2)


def build_pair(tmp_path, predictor: KronosConfig, tokenizer: TokenizerConfig, seed: int = 0):
    torch.manual_seed(seed)
    ref_model = reference.Kronos(**predictor.to_dict()).eval()
    ref_tokenizer = reference.KronosTokenizer(**tokenizer.to_dict()).eval()
    ref_model.save_pretrained(tmp_path / "predictor")
    ref_tokenizer.save_pretrained(tmp_path / "tokenizer")
    ours = Kronos.from_pretrained(tmp_path / "predictor")
    our_tokenizer = KronosTokenizer.from_pretrained(tmp_path / "tokenizer")
    return ref_model, ref_tokenizer, ours, our_tokenizer


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("tiny"), TINY.predictor, TINY.tokenizer)


def random_stamp(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    columns = [torch.randint(low, high, (batch, length), generator=generator)
               for low, high in [(0, 60), (0, 24), (0, 7), (1, 32), (1, 13)]]
    return torch.stack(columns, dim=-1).float()


def zero_dropout(*modules: torch.nn.Module) -> None:
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, torch.nn.Dropout):
                sub.p = 0.0
            if hasattr(sub, "attn_dropout_p"):
                sub.attn_dropout_p = 0.0


def reference_greedy(ref_model, ref_tokenizer, x, x_stamp, y_stamp, pred_len, max_context):
    preds = reference.kronos.auto_regressive_inference(
        ref_tokenizer, ref_model, x, x_stamp, y_stamp, max_context, pred_len, clip=5, T=1.0, top_k=1,
        top_p=0.9, sample_count=1)
    return torch.from_numpy(preds[:, -pred_len:])


def test_state_dict_keys_buffers_and_config_match_the_reference(tiny_pair, tmp_path):
    ref_model, ref_tokenizer, ours, our_tokenizer = tiny_pair
    for theirs, mine in [(ref_model, ours), (ref_tokenizer, our_tokenizer)]:
        ref_state, our_state = theirs.state_dict(), mine.state_dict()
        assert list(our_state) == list(ref_state)
        for key, value in ref_state.items():
            assert our_state[key].dtype == value.dtype, key
            assert torch.equal(our_state[key], value), key
        # Same persistent buffers (stored in checkpoints) and same trainable parameters.
        assert {n for n, _ in mine.named_buffers()} & set(our_state) == {n for n, _ in theirs.named_buffers()} & set(ref_state)
        assert {n for n, p in mine.named_parameters() if p.requires_grad} == {
            n for n, p in theirs.named_parameters() if p.requires_grad}
    for name in ["transformer.0.self_attn.q_proj.weight", "transformer.1.ffn.w1.weight", "embedding.emb_s1.weight",
                 "time_emb.minute_embed.weight", "dep_layer.cross_attn.k_proj.bias", "head.proj_s1.weight",
                 "transformer.0.self_attn.rotary.inv_freq"]:
        assert name in ours.state_dict()
    for name in ["encoder.0.self_attn.q_proj.weight", "quant_embed.weight", "post_quant_embed_pre.weight",
                 "tokenizer.bsq.basis", "tokenizer.bsq.group_basis"]:
        assert name in our_tokenizer.state_dict()
    # Ours writes the same hub format back: the reference loads it strictly.
    ours.save_pretrained(tmp_path / "again")
    reloaded = reference.Kronos.from_pretrained(str(tmp_path / "again"), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), ref_model.state_dict().values()))


def test_tokenizer_encode_decode_and_training_loss_match(tiny_pair):
    _, ref_tokenizer, _, our_tokenizer = tiny_pair
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, 6, generator=g)
    ref_ids, our_ids = ref_tokenizer.encode(x, half=True), our_tokenizer.encode(x, half=True)
    assert all(torch.equal(a, b) for a, b in zip(ref_ids, our_ids))
    assert torch.equal(ref_tokenizer.encode(x), our_tokenizer.encode(x, half=False))
    assert (ref_tokenizer.decode(ref_ids, half=True) - our_tokenizer.decode(our_ids)).abs().max() <= 1e-5

    ref_tokenizer.train(), our_tokenizer.train()
    try:
        (ref_pre, ref_full), ref_bsq, _, _ = ref_tokenizer(x)
        out = our_tokenizer(x)
        assert (ref_pre - out.recon_s1).abs().max() <= 1e-5
        assert (ref_full - out.recon).abs().max() <= 1e-5
        assert abs(ref_bsq.item() - out.bsq_loss.item()) <= 1e-6
        loss, parts = tokenizer_loss(out, x)
        loss.backward()
        assert set(parts) == {"recon_s1", "recon", "bsq"}
        assert our_tokenizer.encoder[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    finally:
        ref_tokenizer.eval(), our_tokenizer.eval()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_predictor_logits_match(tiny_pair, mode):
    ref_model, _, ours, _ = tiny_pair
    g = torch.Generator().manual_seed(2)
    s1, s2, targets = (torch.randint(0, 64, (2, 60), generator=g) for _ in range(3))
    stamp = random_stamp(2, 60, g)
    theirs_m, mine_m = ref_model, ours
    if mode == "train":  # compare the training graph (causal s2 attention) with dropout off
        theirs_m = reference.Kronos(**TINY.predictor.to_dict())
        theirs_m.load_state_dict(ref_model.state_dict())
        mine_m = Kronos(**TINY.predictor.to_dict())
        mine_m.load_state_dict(ours.state_dict())
        zero_dropout(theirs_m, mine_m)
        theirs_m.train(), mine_m.train()
    ref_s1, ref_s2 = theirs_m(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
    our_s1, our_s2 = mine_m(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)
    assert (ref_s1 - our_s1).abs().max() <= 1e-5
    assert (ref_s2 - our_s2).abs().max() <= 1e-5
    # Inference pieces: decode_s1 over the window, decode_s2 for one sampled s1.
    ref_logits, ref_ctx = theirs_m.decode_s1(s1, s2, stamp)
    our_logits, our_ctx = mine_m.decode_s1(s1, s2, stamp)
    assert (ref_logits - our_logits).abs().max() <= 1e-5
    last = targets[:, -1:]
    assert (theirs_m.decode_s2(ref_ctx, last) - mine_m.decode_s2(our_ctx, last)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "lookback,pred_len,max_context",
    [(48, 16, 512), (40, 12, 32)],
    ids=["within-context", "sliding-window"],
)
def test_greedy_forecast_matches_reference(tiny_pair, lookback, pred_len, max_context):
    ref_model, ref_tokenizer, ours, our_tokenizer = tiny_pair
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, lookback, 6, generator=g).cumsum(dim=1) / 5
    x_stamp, y_stamp = random_stamp(2, lookback, g), random_stamp(2, pred_len, g)
    theirs = reference_greedy(ref_model, ref_tokenizer, x, x_stamp, y_stamp, pred_len, max_context)
    mine = generate(ours, our_tokenizer, x, x_stamp, y_stamp, pred_len, top_k=1, max_context=max_context)
    assert mine.shape == (2, 1, pred_len, 6)
    assert (mine[:, 0] - theirs).abs().max() <= 1e-4


def test_mini_style_model_with_context_over_512(tmp_path):
    ref_model, ref_tokenizer, ours, our_tokenizer = build_pair(tmp_path, MINI_PREDICTOR, MINI_TOKENIZER, seed=7)
    g = torch.Generator().manual_seed(4)
    lookback, pred_len = 600, 4
    x = torch.randn(1, lookback, 6, generator=g).cumsum(dim=1) / 10
    x_stamp, y_stamp = random_stamp(1, lookback, g), random_stamp(1, pred_len, g)
    s1, s2 = our_tokenizer.encode(x)
    with torch.no_grad():
        ref_logits = ref_model(s1, s2, x_stamp, use_teacher_forcing=True, s1_targets=s1)
        our_logits = ours(s1, s2, x_stamp, use_teacher_forcing=True, s1_targets=s1)
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(ref_logits, our_logits))
    theirs = reference_greedy(ref_model, ref_tokenizer, x, x_stamp, y_stamp, pred_len, 2048)
    mine = generate(ours, our_tokenizer, x, x_stamp, y_stamp, pred_len, top_k=1, max_context=2048)
    assert (mine[:, 0] - theirs).abs().max() <= 1e-4


def test_causal_s2_option_removes_the_eval_mode_look_ahead(tiny_pair):
    _, _, ours, _ = tiny_pair
    g = torch.Generator().manual_seed(5)
    s1, s2, targets = (torch.randint(0, 64, (1, 30), generator=g) for _ in range(3))
    stamp = random_stamp(1, 30, g)
    later = s2.clone()
    later[0, 20] = (later[0, 20] + 1) % 64  # change an input after position 10
    with torch.no_grad():
        leaky = [ours(s1, x, stamp, use_teacher_forcing=True, s1_targets=targets)[1] for x in (s2, later)]
        causal = [ours(s1, x, stamp, use_teacher_forcing=True, s1_targets=targets, causal_s2=True)[1]
                  for x in (s2, later)]
    # Released eval behaviour: s2 logits at position 10 see position 20's input.
    assert not torch.allclose(leaky[0][0, 10], leaky[1][0, 10])
    assert torch.allclose(causal[0][0, :20], causal[1][0, :20], atol=1e-6)
    # causal_s2=True in eval mode is the training graph without dropout.
    trained_graph = Kronos(**TINY.predictor.to_dict())
    trained_graph.load_state_dict(ours.state_dict())
    zero_dropout(trained_graph)
    trained_graph.train()
    with torch.no_grad():
        expected = trained_graph(s1, s2, stamp, use_teacher_forcing=True, s1_targets=targets)[1]
    assert (expected - causal[0]).abs().max() <= 1e-6
