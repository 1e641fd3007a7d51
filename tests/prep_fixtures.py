"""Tiny raw files in the exact on-disk formats of the real downloads, built at test time.

Each builder writes what the real file holds (layout, key names, encodings), only with fewer
images, and with pixel values that identify each image, so a test can tell where it went.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# CIFAR-100's 100 fine label names (alphabetical, index = fine label), its 20 superclasses, and
# each fine class's superclass, as the archive's meta file and torchvision / TFDS / torchmeta
# list them.
FINE = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
        "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
        "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
        "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
        "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
        "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
        "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
        "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
COARSE = ("aquatic_mammals fish flowers food_containers fruit_and_vegetables "
          "household_electrical_devices household_furniture insects large_carnivores "
          "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
          "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 "
          "vehicles_2").split()
COARSE_OF = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13,
             15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4,
             17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13,
             15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13]


def cifar_pixel(fine, file_id, index):
    """The image a fixture stores for (class, file, position), as HWC uint8: red rises down the
    rows, green along the columns, and the blue of the first three pixels of the top row holds
    (fine label, 0 for train / 1 for test, position in the file)."""
    y, x = np.mgrid[0:32, 0:32]
    image = np.empty((32, 32, 3), np.uint8)
    image[..., 0] = y * 8
    image[..., 1] = x * 8
    image[..., 2] = 200
    image[0, :3, 2] = fine, file_id, index % 256
    return image


def py2_pickle(value) -> bytes:
    """Pickle ``value`` the way Python 2 with numpy 1 wrote CIFAR-100 (protocol 2): strings are
    Python 2 ``str`` (BINSTRING, bytes that Python 3 must decode), arrays are
    ``numpy.core.multiarray._reconstruct`` with their raw bytes as such a string."""
    import struct

    def string(text):
        raw = text if isinstance(text, bytes) else text.encode("latin1")
        return b"T" + struct.pack("<I", len(raw)) + raw  # BINSTRING

    def encode(v):
        if isinstance(v, dict):
            return b"}(" + b"".join(encode(k) + encode(x) for k, x in v.items()) + b"u"
        if isinstance(v, list):
            return b"](" + b"".join(encode(x) for x in v) + b"e"
        if isinstance(v, (str, bytes)):
            return string(v)
        if isinstance(v, (int, np.integer)):
            return b"J" + struct.pack("<i", int(v))  # BININT
        if isinstance(v, np.ndarray):
            assert v.dtype == np.uint8
            shape = b"(" + b"".join(encode(int(n)) for n in v.shape) + b"t"
            dtype = (b"cnumpy\ndtype\n(" + string("u1") + b"K\x00K\x01tR"
                     + b"(K\x03" + string("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85"
                    + string("b") + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89"
                    + string(v.tobytes()) + b"tb")
        raise TypeError(type(v))

    return b"\x80\x02" + encode(value) + b"."


def _cifar_file(fine_labels, file_id):
    """A CIFAR-100 python 'train'/'test' dict: data rows are 3 planes (R, G, B), each row-major."""
    rows = np.empty((len(fine_labels), 3072), np.uint8)
    for i, f in enumerate(fine_labels):
        image = cifar_pixel(f, file_id, i)
        for c in range(3):  # written plane by plane, pixel by pixel: the documented layout
            for y in range(32):
                rows[i, c * 1024 + y * 32: c * 1024 + y * 32 + 32] = image[y, :, c]
    return {"batch_label": "training batch 1 of 1", "filenames": ["x.png"] * len(rows),
            "fine_labels": list(fine_labels), "coarse_labels": [COARSE_OF[f] for f in fine_labels],
            "data": rows}


def make_cifar100(path: Path, train_per_class=8, test_per_class=2, fine_names=FINE) -> Path:
    """``cifar-100-python.tar.gz`` with the real members: cifar-100-python/{train,test,meta}."""
    rng = np.random.default_rng(0)
    files = {
        "train": _cifar_file(rng.permutation(np.repeat(np.arange(100), train_per_class)).tolist(), 0),
        "test": _cifar_file(rng.permutation(np.repeat(np.arange(100), test_per_class)).tolist(), 1),
        "meta": {"fine_label_names": list(fine_names), "coarse_label_names": list(COARSE)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        folder = tarfile.TarInfo("cifar-100-python")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        for name, content in files.items():
            data = py2_pickle(content)  # the real files were written by Python 2
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def omniglot_png(character_id: int, drawer: int) -> bytes:
    """A 105×105 1-bit PNG, black strokes on white like Omniglot: a filled black square whose
    position encodes the character, plus a bar whose length encodes the drawer."""
    image = np.ones((105, 105), bool)  # True = white background
    top, left = 10 + (character_id % 5) * 12, 10 + (character_id // 5 % 5) * 12
    image[top:top + 30, left:left + 30] = False
    image[95:100, 5:5 + 4 * (drawer + 1)] = False
    buf = io.BytesIO()
    Image.fromarray(image).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_omniglot(folder: Path, alphabets: dict[str, dict[str, int]], drawers=2) -> dict[str, int]:
    """images_background.zip / images_evaluation.zip in the real layout
    ``images_<set>/<alphabet>/characterNN/<id>_<drawer>.png``.
    ``alphabets = {"background": {alphabet: num_characters}, "evaluation": {...}}``; returns
    {"<alphabet>/characterNN": character id} (the id the image pattern encodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, image_id = {}, 0
    for part in ("background", "evaluation"):
        with zipfile.ZipFile(folder / f"images_{part}.zip", "w") as zf:
            for alphabet, count in alphabets[part].items():
                for c in range(1, count + 1):
                    key = f"{alphabet}/character{c:02d}"
                    ids[key] = len(ids)
                    image_id += 1
                    for d in range(1, drawers + 1):
                        name = f"images_{part}/{alphabet}/character{c:02d}/{image_id:04d}_{d:02d}.png"
                        zf.writestr(name, omniglot_png(ids[key], d))
    return ids


def mini_imagenet_pickle(path: Path, wnids: list[str], per_class=3, protocol=4, shuffle=True) -> dict:
    """A ``mini-imagenet-cache-*.pkl``: {'image_data': uint8 [n,84,84,3], 'class_dict': {wnid: [i]}}.
    Pixel [0, 0] of an image holds (class position, index within class, 7)."""
    n = len(wnids) * per_class
    images = np.full((n, 84, 84, 3), 50, np.uint8)
    order = np.random.default_rng(1).permutation(n) if shuffle else np.arange(n)
    class_dict = {}
    for c, wnid in enumerate(wnids):
        rows = order[c * per_class:(c + 1) * per_class]
        class_dict[wnid] = [int(r) for r in rows]
        for k, r in enumerate(rows):
            images[r, 0, 0] = (c, k, 7)
            images[r, 83, 0] = (255, 0, 0)  # bottom-left red: orientation
    data = {"image_data": images, "class_dict": class_dict}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return data


def make_omniglot_zip(path: Path, top: str, alphabets: dict[str, int], drawers=2, first_id=0) -> dict[str, int]:
    """One Omniglot zip in the real layout ``<top>/<alphabet>/characterNN/<id>_<drawer>.png``
    (105×105 1-bit PNGs, ``omniglot_png``), e.g. ``top="images_background_small1"`` for the
    minimal split 1. Returns {"<alphabet>/characterNN": character id}, ids from ``first_id``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = {}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", b"")  # the real zips list their folders too
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                key = f"{alphabet}/character{c:02d}"
                ids[key] = first_id + len(ids)
                for d in range(1, drawers + 1):
                    zf.writestr(f"{top}/{key}/{ids[key] + 1:04d}_{d:02d}.png", omniglot_png(ids[key], d))
    return ids


def runs_pairing(runs: int, classes: int, seed=0) -> dict[str, list[int]]:
    """For each run ``runNN``: the class (1-based) of each query item01.., a permutation."""
    rng = np.random.default_rng(seed)
    return {f"run{r:02d}": [int(c) + 1 for c in rng.permutation(classes)] for r in range(1, runs + 1)}


def run_png(run: int, index: int, query: bool) -> bytes:
    """The image a runs fixture stores: Omniglot-like, distinct per run and class; a query is
    another drawer of the same character as its class image."""
    return omniglot_png(run * 5 + index, 2 if query else 1)


def write_runs(files: dict, pairing: dict[str, list[int]], prefix="", newline="\n") -> None:
    """Fill ``files[path] = bytes`` with the one-shot runs layout: runNN/training/classJJ.png,
    runNN/test/itemKK.png and runNN/class_labels.txt ("runNN/test/itemKK.png runNN/training/classJJ.png"
    per query, paths relative to the folder holding runNN)."""
    for run, classes in pairing.items():
        r = int(run[3:])
        for j in range(1, len(classes) + 1):
            files[f"{prefix}{run}/training/class{j:02d}.png"] = run_png(r, j, query=False)
        lines = []
        for k, j in enumerate(classes, 1):
            files[f"{prefix}{run}/test/item{k:02d}.png"] = run_png(r, j, query=True)
            lines.append(f"{run}/test/item{k:02d}.png {run}/training/class{j:02d}.png")
        files[f"{prefix}{run}/class_labels.txt"] = (newline.join(lines) + newline).encode()


def make_runs_folder(folder: Path, pairing: dict[str, list[int]], newline="\n") -> Path:
    """The extracted one-shot runs: ``folder/runNN/...``."""
    files = {}
    write_runs(files, pairing, newline=newline)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def make_runs_zip(path: Path, pairing: dict[str, list[int]], top: str = "") -> Path:
    """``all_runs.zip``: the run folders at the top of the zip, or under ``top`` (e.g. "all_runs/")."""
    files = {}
    write_runs(files, pairing, prefix=top)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` × ``height`` 1-bit pixels, with a tiny pixel stream:
    what a decompression bomb looks like to a decoder that checks the size before decoding."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
