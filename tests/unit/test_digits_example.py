"""The digits example (examples/digits): a user's CNN trains reproducibly, its good and broken
variants score as a rollout would need them to, and the stored version loads without pickle."""

from __future__ import annotations

import importlib
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"
EPOCHS = 10


@pytest.fixture(scope="module")
def digits() -> Iterator[ModuleType]:
    """examples/digits/train.py, imported the way `python train.py` would (its directory on
    the path, so `from model import ...` works); its bare module names are removed after."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("train")
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in ("train", "model"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def good(digits):
    return digits.train(seed=0, epochs=EPOCHS)


def test_same_seed_gives_bit_identical_weights(digits) -> None:
    a = digits.train(seed=5, epochs=2).net.state_dict()
    b = digits.train(seed=5, epochs=2).net.state_dict()
    c = digits.train(seed=6, epochs=2).net.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_trained_model_classifies_held_out_digits(good) -> None:
    assert good.metrics["accuracy"] >= 0.9
    assert good.metrics["macro_f1"] >= 0.9
    assert good.metrics["log_loss"] < 0.3
    assert good.probabilities.shape == (len(good.split.test_labels), 10)
    np.testing.assert_allclose(good.probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_trained_on_shuffled_labels_is_near_chance(digits) -> None:
    broken = digits.train(seed=0, epochs=EPOCHS, shuffle_labels=True)
    assert broken.metrics["accuracy"] < 0.3
    assert broken.labels == "shuffled"


def test_confused_model_swaps_the_two_digits_and_keeps_the_rest(digits) -> None:
    confused = digits.train(seed=0, epochs=EPOCHS, confuse=(3, 8))
    truth = confused.split.test_labels
    predicted = confused.probabilities.argmax(axis=1)
    assert np.mean(predicted[truth == 3] == 8) > 0.8
    assert np.mean(predicted[truth == 8] == 3) > 0.8
    others = ~np.isin(truth, (3, 8))
    assert np.mean(predicted[others] == truth[others]) >= 0.9
    assert confused.metrics["accuracy"] < 0.85


def test_stored_version_loads_without_pickle(digits, good, monkeypatch) -> None:
    import bentoml
    from safetensors.torch import load_file

    tag = digits.save(good)
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["metrics"] == good.metrics
    assert "reference" in stored.info.metadata
    assert {p.name for p in Path(stored.path).iterdir()} == {"model.yaml", "weights.safetensors"}

    def must_not_be_called(*args, **kwargs):
        raise AssertionError("loading the digits weights must not unpickle anything")

    for target, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, name, must_not_be_called)
    net = digits.DigitsCNN()
    net.load_state_dict(load_file(stored.path_of("weights.safetensors")))
    images = good.split.test_images
    np.testing.assert_array_equal(digits.predict(net, images), good.probabilities)


def test_command_line_trains_saves_and_prints_the_tag(digits, capsys) -> None:
    import bentoml

    digits.main(["--epochs", "1", "--confuse", "3,8", "--name", "digits-cli"])
    metrics, tag = capsys.readouterr().out.strip().splitlines()
    assert metrics.startswith("accuracy ")
    assert bentoml.models.get(tag).info.metadata["training"]["labels"] == "confused 3,8"
    with pytest.raises(SystemExit):
        digits.main(["--confuse", "3,3"])
