"""Per-dataset defaults for train.py; every value can be overridden on the command line.

The real datasets default to their published reference settings (docs/paper.md): the MAML
reference code (cbfinn/maml README commands) for Omniglot and mini-ImageNet, learn2learn's
examples/vision/anil_fc100.py for CIFAR-FS and FC100. ``OWN_DATA`` holds the defaults for any
other prepared dataset (``--data DIR``); its image size comes from the dataset's meta.json. ``prepare`` is the command that makes the
prepared folder ``<root>/<dataset>``; train.py prints it when that folder is missing.
"""

from __future__ import annotations

_OMNIGLOT = dict(  # MAML reference: 20-way, meta-batch 16, α=0.1, 5 steps (10 at test), 40k iterations
    ways=20, shots=1, image_size=28, channels=1, hidden=64, meta_batch=16,
    inner_lr=0.1, inner_steps=5, test_inner_steps=10, outer_lr=1e-3, iterations=40_000,
)
_CIFAR = dict(  # learn2learn anil_fc100.py: 5-way 5-shot, meta-batch 32, α=0.1, 5 steps, 1000 iterations
    ways=5, shots=5, image_size=32, channels=3, hidden=64, meta_batch=32,
    inner_lr=0.1, inner_steps=5, test_inner_steps=5, outer_lr=1e-3, iterations=1_000, rotate=False,
)

PRESETS = {
    # The built-in procedural dataset (data_prep/glyphs.py): sized so that `python train.py`
    # finishes in about two minutes on two CPU cores (at most about five).
    "glyphs": dict(
        ways=5, shots=1, image_size=28, channels=1, hidden=64, meta_batch=8,
        inner_lr=0.5, inner_steps=5, test_inner_steps=10, outer_lr=3e-3, iterations=600,
        rotate=False, prepare="python -m data_prep.glyphs --root {root}",
    ),
    # Rotations by k·90° drawn per class per task, as the MAML reference does.
    "omniglot": dict(_OMNIGLOT, rotate=True,
                     prepare="python -m data_prep.omniglot --root {root} --download"),
    # Rotated copies stored as extra classes (torchmeta's convention), so no per-task rotation.
    "omniglot-rot": dict(_OMNIGLOT, rotate=False,
                         prepare="python -m data_prep.omniglot --root {root} --download --rotations classes"),
    # MAML reference: 5-way, meta-batch 4, α=0.01, 5 steps (10 at test), 60k iterations, 32 filters.
    "mini-imagenet": dict(
        ways=5, shots=1, image_size=84, channels=3, hidden=32, meta_batch=4,
        inner_lr=0.01, inner_steps=5, test_inner_steps=10, outer_lr=1e-3, iterations=60_000,
        rotate=False,
        prepare="python -m data_prep.mini_imagenet --root {root} --source FOLDER_WITH_PICKLES "
                "(mini-imagenet-cache-{{train,val,test}}.pkl; see the README on where to get them)",
    ),
    "cifar-fs": dict(_CIFAR, prepare="python -m data_prep.cifar_fs --root {root} --download"),
    "fc100": dict(_CIFAR, prepare="python -m data_prep.fc100 --root {root} --download"),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


# Any other prepared dataset (train.py --data DIR): the common 5-way 1-shot setting with the
# MAML reference's inner loop (α = 0.1, 5 steps, 10 at test) and Adam 1e-3.
OWN_DATA = dict(ways=5, shots=1, hidden=64, meta_batch=8, inner_lr=0.1, inner_steps=5,
                test_inner_steps=10, outer_lr=1e-3, iterations=2_000, rotate=False)
