"""Train the digits CNN on scikit-learn's bundled digits and save it to the BentoML model store.

    python train.py                      # a good model
    python train.py --shuffle-labels     # a broken one: trained on shuffled labels
    python train.py --confuse 3,8        # one that mixes up two digits

Same seed, same weights, bit for bit: everything is seeded, torch runs deterministic kernels on
one thread, and batches are drawn by a seeded generator. The broken variants change only the
training labels; every model is scored against the true labels of the same held-out split, so
their metrics show what a bad rollout would look like.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import bentoml
import numpy as np
import torch
from model import CLASSES, DigitsCNN
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import train_test_split
from torch import nn

import turnout_sdk as turnout

WEIGHTS = "weights.safetensors"
HELD_OUT = 0.25
BATCH = 64
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class Split:
    """Images [N, 1, 8, 8] float32 with raw pixels 0..16, labels [N] int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


@dataclass(frozen=True)
class Trained:
    net: DigitsCNN
    #: Held-out accuracy, log loss and macro F1, against the true labels.
    metrics: dict[str, float]
    #: The model's output on the held-out images [N, 10].
    probabilities: np.ndarray
    split: Split
    #: How the training labels were made: "true", "shuffled" or "confused 3,8".
    labels: str
    seed: int
    epochs: int


def load_split(seed: int) -> Split:
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=HELD_OUT, stratify=labels, random_state=seed
    )
    return Split(train_x, train_y, test_x, test_y)


def relabel(
    labels: np.ndarray, *, shuffle: bool, confuse: tuple[int, int] | None, seed: int
) -> np.ndarray:
    """Training labels for a deliberately bad model: permuted, or two classes swapped."""
    out = labels.copy()
    if shuffle:
        out = np.random.default_rng(seed).permutation(out)
    if confuse is not None:
        a, b = confuse
        out[labels == a], out[labels == b] = b, a
    return out


@contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """Seed everything and use deterministic kernels on one thread; restores torch after."""
    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was_deterministic)


def predict(net: DigitsCNN, images: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(images)), dim=1).numpy()


def evaluate(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "log_loss": float(log_loss(labels, probabilities, labels=list(range(CLASSES)))),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def train(
    *,
    seed: int = 0,
    epochs: int = 20,
    shuffle_labels: bool = False,
    confuse: tuple[int, int] | None = None,
) -> Trained:
    split = load_split(seed)
    targets = relabel(split.train_labels, shuffle=shuffle_labels, confuse=confuse, seed=seed)
    images = torch.from_numpy(split.train_images)
    labels = torch.from_numpy(targets)
    with deterministic(seed) as gen:
        net = DigitsCNN()
        optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
        loss_fn = nn.CrossEntropyLoss()
        net.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(labels), generator=gen).split(BATCH):
                optimizer.zero_grad()
                loss_fn(net(images[batch]), labels[batch]).backward()
                optimizer.step()
        probabilities = predict(net, split.test_images)
    if shuffle_labels:
        described = "shuffled"
    elif confuse is not None:
        described = f"confused {confuse[0]},{confuse[1]}"
    else:
        described = "true"
    return Trained(
        net=net,
        metrics=evaluate(probabilities, split.test_labels),
        probabilities=probabilities,
        split=split,
        labels=described,
        seed=seed,
        epochs=epochs,
    )


def save(trained: Trained, *, name: str = "digits", version: str | None = None) -> str:
    """Store the weights (safetensors: loading them runs no code) with the metrics and the
    reference the model server's drift gauges compare live predictions against (held-out
    predictions; an image input gets no per-pixel reference); returns the tag."""
    reference = turnout.reference(
        outputs={"probabilities": trained.probabilities}, task=turnout.MultiClass()
    )
    metadata: dict[str, Any] = {
        "metrics": trained.metrics,
        "reference": reference,
        "training": {"labels": trained.labels, "seed": trained.seed, "epochs": trained.epochs},
    }
    tag = f"{name}:{version}" if version else name
    with bentoml.models.create(
        tag, labels={"framework": "torch", "task": "digits"}, metadata=metadata
    ) as model:
        save_file(trained.net.state_dict(), model.path_of(WEIGHTS))
    return str(model.tag)


def classes(text: str) -> tuple[int, int]:
    a, b = (int(x) for x in text.split(","))
    if a == b or not (0 <= a < CLASSES and 0 <= b < CLASSES):
        raise argparse.ArgumentTypeError("two different digits 0-9, e.g. 3,8")
    return a, b


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--name", default="digits", help="model name in the store")
    parser.add_argument("--version", help="version label, e.g. v2 (default: BentoML makes one)")
    bad = parser.add_mutually_exclusive_group()
    bad.add_argument("--shuffle-labels", action="store_true", help="train on shuffled labels")
    bad.add_argument("--confuse", type=classes, metavar="A,B", help="swap two digits' labels")
    args = parser.parse_args(argv)
    trained = train(
        seed=args.seed, epochs=args.epochs, shuffle_labels=args.shuffle_labels, confuse=args.confuse
    )
    print(", ".join(f"{k} {v:.4f}" for k, v in trained.metrics.items()))
    print(save(trained, name=args.name, version=args.version))


if __name__ == "__main__":
    main()
