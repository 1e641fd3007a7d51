"""Checkpoints a long run can trust: atomic writes, safe loading, exact resume.

A checkpoint is one ``torch.save`` file holding a dict of plain types and tensors only, so that
``torch.load(weights_only=True)`` reads it without running any pickled code. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one (``os.replace``
is atomic on POSIX and Windows): a crash or a full disk in the middle of a write leaves the
previous checkpoint as it was.

Exact resume needs everything that decides what happens next: weights, optimizer state, the
iteration, the task sampler's state, and the Python, numpy and torch random states
(``rng_state`` / ``set_rng_state``). The configuration and a fingerprint of the dataset are
stored too, so that a resume with other settings or other data can be refused by name
(``config_differences``, ``dataset_fingerprint``).
"""

from __future__ import annotations

import hashlib
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from anil.model import ConvBody, make_head

FORMAT = "anil"  # every file this project writes carries {"format": FORMAT, "version": VERSION}
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, foreign or incompatible; the message says what to do."""


# ------------------------------------------------------------------------------ writing, reading


def save(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically: temporary file, fsync, then ``os.replace``.

    On any failure (including KeyboardInterrupt) the temporary file is removed and whatever was at
    ``path`` before is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch's zip writer reports a failed write (a full disk, a quota) as a RuntimeError
        # ("unexpected pos ..."), chained to the OSError that caused it: surface the OSError.
        tmp.unlink(missing_ok=True)
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise OSError(f"torch.save could not write {path} ({str(e).strip().splitlines()[0][:120]})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every OS or file system
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load(path: str | Path, kind: str | None = None) -> dict:
    """Read a file written by ``save`` with ``torch.load(weights_only=True)`` onto the CPU.

    ``kind`` (e.g. ``"checkpoint"``) requires ``obj["kind"]`` to match. Missing, truncated,
    corrupt and foreign files raise ``CheckpointError`` with a one-line message.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; give the folder of a run written by train.py "
                              f"(it holds checkpoint.pt) or one of its .pt files")
    advice = "delete it, or use another copy"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory comes last
        raise CheckpointError(f"{path} is truncated or corrupt (not a complete torch zip archive); "
                              f"{advice}")
    try:
        with zipfile.ZipFile(path) as archive:  # every member's CRC-32, so damaged weights are caught
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        damaged = f"{type(e).__name__}: {e}"
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch in {damaged}); {advice}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle, EOF and weights-only errors all mean: not usable
        reason = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(f"{path} cannot be read, it is corrupt or holds objects other than "
                              f"tensors and plain values ({type(e).__name__}: {reason}); "
                              f"{advice}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an anil checkpoint (a torch file of some other "
                              f"program); give a file written by train.py")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}, this code reads "
                              f"version {VERSION}")
    if kind is not None and obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds {obj.get('kind')!r} data, not a {kind}; "
                              f"give the run's checkpoint.pt")
    return obj


# ---------------------------------------------------------------------------------- random states


def rng_state() -> dict:
    """Python, numpy (global) and torch (CPU and every CUDA device) random states, in types that
    ``torch.load(weights_only=True)`` accepts (ints, lists, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned. CUDA states are restored when the device count matches."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------- configuration and data


def config_differences(saved: dict, current: dict, keys=None) -> list[str]:
    """``"key: saved → current"`` for every key (of ``keys``, default all) whose values differ."""
    keys = sorted(set(saved) | set(current)) if keys is None else keys
    missing = "(not set)"
    return [f"{k}: {saved.get(k, missing)!r} → {current.get(k, missing)!r}"
            for k in keys if saved.get(k, missing) != current.get(k, missing)]


def dataset_fingerprint(path: str | Path, full_below: int = 64 << 20, blocks: int = 64,
                        block_size: int = 1 << 16) -> str:
    """A short hash identifying a prepared dataset: meta.json and every ``.npy`` file, read whole
    when smaller than ``full_below`` bytes, else by its size and ``blocks`` evenly spaced blocks
    (a few MB read even for gigabytes of images; any other preparation — other classes, order or
    images — changes it)."""
    path = Path(path)
    h = hashlib.sha256((path / "meta.json").read_bytes())
    for file in sorted(path.glob("*.npy")):
        size = file.stat().st_size
        h.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            if size < full_below:
                h.update(f.read())
                continue
            for i in range(blocks):
                f.seek(size * i // blocks)
                h.update(f.read(block_size))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- loading a saved run

WEIGHT_FILES = {"best": "best.pt", "last": "checkpoint.pt"}


def read_weights(path: str | Path, weights: str = "best") -> tuple[Path, dict]:
    """(file, contents) of a saved network: ``path`` is a run folder (its best.pt, or its
    checkpoint.pt with ``weights="last"`` or when no validation ran) or any .pt file written by
    train.py or ``anil.paper.compare``. Raises CheckpointError with a one-line message."""
    path = Path(path)
    file = path / WEIGHT_FILES[weights] if path.is_dir() else path
    if path.is_dir() and weights == "best" and not file.exists():
        file = path / WEIGHT_FILES["last"]  # a run without validation has no best.pt
    saved = load(file)
    if not {"body", "head", "config"} <= set(saved):
        raise CheckpointError(f"{file} holds no network weights; give a run folder or its "
                              f"best.pt, checkpoint.pt or model.pt")
    check_config(file, saved)
    return file, saved


def _whole(low, high=None):
    return lambda v: type(v) is int and low <= v and (high is None or v <= high)


# What a saved config must hold, checked before anything is built from it: (test, in words).
CONFIG_RULES = {
    "channels": (_whole(1), "a positive whole number"),
    "image_size": (_whole(16), "a whole number of at least 16 (four 2x2 poolings)"),
    "hidden": (_whole(1), "a positive whole number"),
    "ways": (_whole(1), "a positive whole number"),
    "shots": (_whole(1), "a positive whole number"),
    "test_inner_steps": (_whole(0, 1000), "a whole number in 0..1000"),
    "inner_lr": (lambda v: type(v) in (int, float) and 0 < v < float("inf"), "a positive number"),
    "eval_tasks": (_whole(1), "a positive whole number"),
    "seed": (_whole(0, 2 ** 32 - 1), "a whole number in 0..4294967295"),
}


def expected_shapes(config: dict) -> dict:
    """The tensor shapes of the body and head that ``config`` describes (model.ConvBody, four
    blocks, and make_head), computed without building anything."""
    c, size, hidden, ways = config["channels"], config["image_size"], config["hidden"], config["ways"]
    body = {}
    for i, inputs in enumerate((c, hidden, hidden, hidden)):
        body |= {f"blocks.{i}.conv.weight": (hidden, inputs, 3, 3), f"blocks.{i}.conv.bias": (hidden,),
                 f"blocks.{i}.norm.weight": (hidden,), f"blocks.{i}.norm.bias": (hidden,)}
    features = hidden * (size >> 4) ** 2
    return {"body": body, "head": {"weight": (ways, features), "bias": (ways,)}}


def check_config(file, saved: dict) -> None:
    """Refuse a saved config of the wrong types or absurd sizes (damaged, edited, or crafted)
    before a network is built from it: each setting must pass CONFIG_RULES, and the sizes must
    be those of the saved tensors (so building costs no more memory than loading did)."""
    config = saved["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: its config is {type(config).__name__}, not a dict; the file "
                              f"is damaged; use another copy")
    for key, (valid, words) in CONFIG_RULES.items():
        needed = key in ("channels", "image_size", "hidden", "ways")  # to build the network
        if (key in config and not valid(config[key])) or (needed and key not in config):
            raise CheckpointError(f"{file}: its config's {key} is {config.get(key, '(missing)')!r:.60}, "
                                  f"not {words}; the file is damaged or edited; use another copy")
    for part, shapes in expected_shapes(config).items():
        tensors = saved[part]
        got = {k: tuple(v.shape) for k, v in tensors.items() if isinstance(v, torch.Tensor)} \
            if isinstance(tensors, dict) else {}
        if got != shapes:
            wrong = next((k for k in shapes if got.get(k) != shapes[k]), next(iter(got), part))
            raise CheckpointError(
                f"{file}: the saved {part} does not match its config ({wrong}: saved "
                f"{list(got.get(wrong, ())) or 'missing'}, the config's sizes give "
                f"{list(shapes.get(wrong, ())) or 'no such tensor'}); the file is damaged or "
                f"edited; use another copy")


def image_shape(config: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the images a run was trained on."""
    return config["channels"], config["image_size"], config["image_size"]


def network_from(saved: dict, ways: int | None = None):
    """The body and head of ``saved`` (a dict from ``read_weights``), on the CPU. With ``ways``
    other than the saved head's, the head is a new one of that width, initialised to zero."""
    config = saved["config"]
    channels, size, _ = image_shape(config)
    body = ConvBody(channels, size, hidden=config["hidden"])
    head = make_head(body.feature_dim, ways or config["ways"])
    try:
        body.load_state_dict(saved["body"])
        if saved["head"]["weight"].shape == head.weight.shape:
            head.load_state_dict(saved["head"])
        else:
            torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"the saved weights do not fit a {config['hidden']}-filter body on "
                              f"{channels}x{size}x{size} images ({str(e).splitlines()[0][:120]})") from None
    return body, head


def load_run(path: str | Path, weights: str = "best"):
    """``(body, head, config)`` of a saved run, ready to evaluate or fine-tune:

        body, head, config = anil.load_run("runs/glyphs-5w1s")     # its best-validated weights

    ``path`` is a run folder or one of its .pt files (see ``read_weights``); ``config`` holds
    the run's settings (ways, shots, inner_lr, test_inner_steps, seed, dataset, ...)."""
    _, saved = read_weights(path, weights)
    body, head = network_from(saved)
    return body, head, dict(saved["config"])