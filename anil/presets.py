"""Per-dataset defaults for train.py; every value can be overridden on the command line."""

from __future__ import annotations

PRESETS = {
    # The built-in procedural dataset (data_prep/glyphs.py): sized so that `python train.py`
    # finishes in about five minutes on two CPU cores.
    "glyphs": dict(
        ways=5, shots=1, image_size=28, channels=1, hidden=64, meta_batch=8,
        inner_lr=0.5, inner_steps=5, test_inner_steps=10, outer_lr=3e-3, iterations=600,
        rotate=False, prepare="python -m data_prep.glyphs --root {root}",
    ),
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])
