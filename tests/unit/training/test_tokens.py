"""Tokens computed once per run: what the cache holds, when it is read, and when it is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kronos_rolling.data.dataset import BarWindowDataset
from kronos_rolling.data.store import DataStore
from kronos_rolling.model.config import MODEL_SIZES
from kronos_rolling.model.tokenizer import KronosTokenizer
from kronos_rolling.settings import load_settings
from kronos_rolling.training.config import TrainConfig
from kronos_rolling.training.loop import EpochSampler, _epoch_indices
from kronos_rolling.settings import Distributed
from kronos_rolling.training.schedule import lr_factor, warmup_cosine
from kronos_rolling.training.tokens import TokenizedWindows, window_tokens

CPU = torch.device("cpu")


def dataset(end="2019-03-01", samples=40) -> BarWindowDataset:
    store = DataStore()
    return BarWindowDataset(store, ["BTCUSD-1D"], "2018-01-01", end, 16, 4, max_samples=samples, seed=0)


def tokenizer(seed=0) -> KronosTokenizer:
    torch.manual_seed(seed)
    return KronosTokenizer.from_config(MODEL_SIZES["tiny"].tokenizer).eval()


class EncodeCounter:
    """Counts the tokenizer's encoder passes (a forward hook on its input projection)."""

    def __init__(self, tok: KronosTokenizer):
        self.calls = 0
        tok.embed.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_the_tokens_are_the_tokenizer_encoding_of_each_window(tmp_path):
    windows, tok = dataset(), tokenizer()
    tokens = window_tokens(windows, tok, CPU, tmp_path)
    x = torch.stack([windows[i]["x"] for i in range(len(windows))])
    s1, s2 = tok.encode(x, half=True)
    assert torch.equal(tokens.s1.long(), s1) and torch.equal(tokens.s2.long(), s2)
    item = TokenizedWindows(windows, tokens)[3]
    assert torch.equal(item["s1"], s1[3]) and torch.equal(item["stamp"], windows[3]["stamp"])
    assert torch.equal(item["event_ids"], windows[3]["event_ids"])


def test_a_second_run_reads_the_cache_and_encodes_nothing(tmp_path):
    windows, tok = dataset(), tokenizer()
    counter = EncodeCounter(tok)
    first = window_tokens(windows, tok, CPU, tmp_path)
    assert counter.calls > 0 and len(list(tmp_path.glob("*.pt"))) == 1
    counter.calls = 0
    second = window_tokens(windows, tok, CPU, tmp_path)
    assert counter.calls == 0
    assert torch.equal(first.s1, second.s1) and torch.equal(first.s2, second.s2)


@pytest.mark.parametrize("change", ["tokenizer", "data"])
def test_a_changed_tokenizer_or_data_invalidates_the_cache(tmp_path, change):
    windows, tok = dataset(), tokenizer()
    before = window_tokens(windows, tok, CPU, tmp_path)
    if change == "tokenizer":
        with torch.no_grad():
            tok.quant_embed.weight.mul_(-1)  # flips every sign: other tokens
    else:
        windows = dataset(end="2019-02-01")
    counter = EncodeCounter(tok)
    after = window_tokens(windows, tok, CPU, tmp_path)
    assert counter.calls > 0, "stale tokens were read"
    assert after.key != before.key and len(list(tmp_path.glob("*.pt"))) == 2
    x = torch.stack([windows[i]["x"] for i in range(len(windows))])
    assert torch.equal(after.s1.long(), tok.encode(x, half=True)[0])


def test_a_damaged_cache_file_is_recomputed_and_replaced(tmp_path):
    windows, tok = dataset(), tokenizer()
    good = window_tokens(windows, tok, CPU, tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    again = window_tokens(windows, tok, CPU, tmp_path)
    assert torch.equal(good.s1, again.s1)
    assert torch.load(path, weights_only=True)["key"] == good.key


def test_the_cache_lives_in_the_home_token_cache_folder(tmp_path):
    assert load_settings({"KRONOS_HOME": str(tmp_path)}).home.token_cache == tmp_path / "token-cache"


def test_the_epoch_sampler_gives_each_epochs_seeded_order():
    config = TrainConfig(mode="pooled", as_of="2019-01-01", max_samples_per_epoch=50)
    sampler = EpochSampler(120, config, Distributed())
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert orders[-1] == _epoch_indices(120, epoch, config, Distributed()).tolist()
        assert len(sampler) == 50
    assert orders[0] != orders[1]


def test_one_schedule_warms_up_linearly_then_decays_to_a_tenth():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(20, 4, 20) == pytest.approx(0.1)
    factors = [lr_factor(s, 4, 20) for s in range(4, 21)]
    assert all(np.diff(factors) <= 0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = warmup_cosine(optimizer, 20, 0.2)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, 4, 20) for s in range(20)])
