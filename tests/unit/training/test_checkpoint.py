"""The epoch checkpoint: safetensors + JSON, fingerprint read first, nothing unpickled."""

from __future__ import annotations

import json
import pickle

import torch

from kronos_rolling.training.checkpoint import LEGACY_PICKLE, STATE_FILE, Checkpoint


def plant_pickle(path, marker) -> None:
    """Write a pickle whose loading runs `open(marker, 'w')`: the marker proves code ran."""
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Payload()))


def test_a_planted_pickle_proves_it_runs_when_unpickled(tmp_path):
    """The payload is real: unpickling it does create the marker (so its absence below means something)."""
    marker = tmp_path / "ran"
    plant_pickle(tmp_path / "payload.pkl", marker)
    pickle.loads((tmp_path / "payload.pkl").read_bytes())
    assert marker.exists()


def optimiser_state():
    weight = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3, betas=(0.9, 0.99))
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    return weight, optimizer


def test_the_whole_training_state_round_trips_with_types_kept(tmp_path):
    weight, optimizer = optimiser_state()
    state = {"epoch": 2, "trainable": {"w": weight.detach()}, "optimizer": optimizer.state_dict(),
             "history": [{"epoch": 1, "train_loss": 0.5}], "best_state": None, "best_val": float("inf"),
             "torch_rng": torch.get_rng_state(), "run_id": "abc"}
    Checkpoint(tmp_path, "fp").save(state)
    loaded = Checkpoint(tmp_path, "fp").load()

    assert loaded["epoch"] == 2 and loaded["best_val"] == float("inf") and loaded["best_state"] is None
    assert torch.equal(loaded["trainable"]["w"], weight.detach())
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    assert list(loaded["optimizer"]["state"]) == [0]  # int keys stay ints
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 2))], lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])  # what fit() does on resume
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert sorted(p.name for p in tmp_path.iterdir())[0] == STATE_FILE
    assert all(p.suffix in (".json", ".safetensors") for p in tmp_path.iterdir())


def test_a_checkpoint_of_other_settings_is_not_read_beyond_its_json(tmp_path):
    Checkpoint(tmp_path, "one").save({"epoch": 1, "w": torch.ones(2)})
    [tensors] = tmp_path.glob("tensors-*.safetensors")
    tensors.write_bytes(b"garbage: never opened for another fingerprint")
    assert Checkpoint(tmp_path, "other").load() is None
    assert Checkpoint(tmp_path, "one").load() is None, "a tensor file that fails its sha256 is not resumed"


def test_no_planted_pickle_runs_wherever_the_checkpoint_loader_looks(tmp_path):
    """checkpoint.pt (what older versions wrote), a pickle in place of the tensor file, a pickle named as
    the JSON: none of them runs, and training simply starts from epoch 0."""
    marker = tmp_path / "marker"
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    plant_pickle(folder / LEGACY_PICKLE, marker)
    assert Checkpoint(folder, "fp").load() is None

    Checkpoint(folder, "fp").save({"epoch": 1, "w": torch.ones(2)})
    [tensors] = folder.glob("tensors-*.safetensors")
    plant_pickle(tensors, marker)
    assert Checkpoint(folder, "fp").load() is None

    record = json.loads((folder / STATE_FILE).read_text())
    plant_pickle(folder / STATE_FILE, marker)
    assert Checkpoint(folder, "fp").load() is None
    (folder / STATE_FILE).write_text(json.dumps({**record, "tensors": LEGACY_PICKLE}))
    assert Checkpoint(folder, "fp").load() is None
    assert not marker.exists()


def test_clear_removes_the_checkpoint_and_its_tensors(tmp_path):
    checkpoint = Checkpoint(tmp_path / "c", "fp")
    checkpoint.save({"epoch": 1, "w": torch.ones(2)})
    checkpoint.save({"epoch": 2, "w": torch.zeros(2)})
    assert len(list((tmp_path / "c").glob("tensors-*"))) == 1, "the older tensor file is removed"
    checkpoint.clear()
    assert not (tmp_path / "c").exists()
