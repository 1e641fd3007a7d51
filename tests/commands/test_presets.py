import importlib
import importlib.util
from pathlib import Path

import pytest

from anil.run.presets import PRESETS

ROOT = Path(__file__).resolve().parents[2]

# The published reference settings (docs/paper.md), written out again by hand: (ways, shots, image, channels, filters, meta-batch,
# inner α, train steps, test steps, Adam β, iterations, per-task rotation).
REFERENCE = {
    # MAML reference code, Omniglot 20-way
    "omniglot": (20, 1, 28, 1, 64, 16, 0.1, 5, 10, 1e-3, 40_000, True),
    "omniglot-rot": (20, 1, 28, 1, 64, 16, 0.1, 5, 10, 1e-3, 40_000, False),
    # MAML reference code, mini-ImageNet 5-way, 32 filters
    "mini-imagenet": (5, 1, 84, 3, 32, 4, 0.01, 5, 10, 1e-3, 60_000, False),
    # learn2learn anil_fc100.py, 5-way 5-shot
    "cifar-fs": (5, 5, 32, 3, 64, 32, 0.1, 5, 5, 1e-3, 1_000, False),
    "fc100": (5, 5, 32, 3, 64, 32, 0.1, 5, 5, 1e-3, 1_000, False),
}
KEYS = ("ways", "shots", "image_size", "channels", "hidden", "meta_batch", "inner_lr", "inner_steps",
        "test_inner_steps", "outer_lr", "iterations", "rotate")


@pytest.fixture(scope="module")
def train():
    from anil import train as module
    return module


@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_preset_resolves_to_the_reference_settings(train, dataset):
    args, _ = train.parse_args(["--dataset", dataset, "--device", "cpu"])
    assert tuple(getattr(args, k) for k in KEYS) == REFERENCE[dataset]
    assert args.data_root / args.dataset == Path("data") / dataset  # where train.py looks


def test_every_value_can_be_overridden(train):
    args, _ = train.parse_args(["--dataset", "omniglot", "--device", "cpu", "--ways", "5", "--shots", "5",
                             "--meta-batch", "32", "--inner-lr", "0.4", "--inner-steps", "1",
                             "--test-inner-steps", "3", "--outer-lr", "0.01", "--iterations", "7",
                             "--hidden", "32"])
    assert (args.ways, args.shots, args.meta_batch, args.inner_lr, args.inner_steps,
            args.test_inner_steps, args.outer_lr, args.iterations, args.hidden) == (
        5, 5, 32, 0.4, 1, 3, 0.01, 7, 32)


def test_the_built_in_preset_is_kept(train):
    args, _ = train.parse_args(["--device", "cpu"])
    assert args.dataset == "glyphs" and (args.ways, args.shots, args.meta_batch) == (5, 1, 8)


@pytest.mark.parametrize("dataset", sorted(PRESETS))
def test_preparation_command_names_a_real_module(dataset):
    command = PRESETS[dataset]["prepare"].format(root="data")
    words = command.split()
    assert words[:3] == ["python", "-m", words[2]] and words[3:5] == ["--root", "data"]
    module = importlib.import_module(words[2])
    assert callable(module.main)
    assert "{" not in command.replace("{train,val,test}", "")  # formatted cleanly
