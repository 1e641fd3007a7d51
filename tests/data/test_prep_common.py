"""data_prep.common's guards, called directly: split lists that overlap, archive member names that
leave their folder, downloads that do not match their checksum, pickles that name a callable.
(test_archives.py runs the same member names through real archives.)"""

import hashlib
import re
from pathlib import Path

import pytest

from data_prep import archives, common, pickles


# ----------------------------------------------------------------------------- split lists


def test_disjoint_split_lists_pass():
    assert common.check_disjoint({"train": ["a", "b"], "val": ["c"], "test": ["d", "e"]}, "lists") is None
    assert common.check_disjoint({"train": [], "val": [], "test": []}, "lists") is None


@pytest.mark.parametrize("splits,first,second", [
    ({"train": ["a", "b"], "val": ["c", "b"], "test": ["d"]}, "train", "val"),
    ({"train": ["a"], "val": ["c"], "test": ["d", "a"]}, "train", "test"),
    ({"train": ["a"], "val": ["c", "x"], "test": ["x"]}, "val", "test"),
])
def test_a_class_in_two_splits_is_refused_by_name(splits, first, second):
    """A class in two splits would be met in training and scored as 'unseen' at test time."""
    with pytest.raises(common.PrepError) as e:
        common.check_disjoint(splits, "data_prep/splits/toy_*.txt")
    message = str(e.value)
    shared = (set(splits[first]) & set(splits[second])).pop()
    assert message.startswith("data_prep/splits/toy_*.txt: ")
    assert f"class {shared!r} is in both the {first} and {second} splits" in message


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_class_listed_twice_in_one_split_is_refused(split):
    """A duplicate would make one class two labels of the same task."""
    splits = {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    splits[split] = splits[split] + [splits[split][0]]
    twice = splits[split][0]
    with pytest.raises(common.PrepError, match=rf"^lists: the {split} split lists the class '{twice}' twice"):
        common.check_disjoint(splits, "lists")


# ----------------------------------------------------------------------- archive member names

ARCHIVE = Path("raw/a.zip")
ESCAPING = [
    "C:evil",  # drive-relative on Windows: lands in the current folder of drive C
    "C:/x", "C:\\x", "c:", "/abs", "/", "\\\\server\\share\\x",
    "../up", "a/../../up", "a/b/../../../up", "..\\up", "a\\..\\..\\up", "..",
]
PLAIN = ["a.png", "top/sub/file.bin", "images_background/Latin/character01/0001_01.png",
         "a..b/c..d.txt", "./a", "dir/", "x.y/..z"]


@pytest.mark.parametrize("name", ESCAPING)
def test_member_names_outside_the_folder_are_refused(name):
    with pytest.raises(common.PrepError) as e:
        archives._check_member(ARCHIVE, name)
    assert f"{ARCHIVE} holds a member outside its folder ({name!r})" in str(e.value)


@pytest.mark.parametrize("name", PLAIN)
def test_plain_relative_member_names_are_accepted(name):
    assert archives._check_member(ARCHIVE, name) is None


def test_links_and_special_files_are_refused_whatever_their_name():
    with pytest.raises(common.PrepError, match=re.escape("holds a link ('ok.txt')")):
        archives._check_member(ARCHIVE, "ok.txt", is_link=True)
    with pytest.raises(common.PrepError, match=re.escape("holds a special file ('ok.txt')")):
        archives._check_member(ARCHIVE, "ok.txt", is_special=True)


# ------------------------------------------------------------------------------- downloads


def test_an_existing_download_is_kept_only_if_its_md5_matches(tmp_path, capsys):
    source = tmp_path / "server" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(b"the real bytes")
    md5 = hashlib.md5(b"the real bytes").hexdigest()
    dest = tmp_path / "raw" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"a truncated or foreign file")  # e.g. an interrupted copy by hand
    assert common.download(source.as_uri(), dest, md5) == dest
    assert dest.read_bytes() == b"the real bytes"  # fetched again, not trusted
    assert "downloading" in capsys.readouterr().out
    source.write_bytes(b"changed on the server")
    common.download(source.as_uri(), dest, md5)  # a good copy is kept: no second download
    assert dest.read_bytes() == b"the real bytes" and "already downloaded" in capsys.readouterr().out


def test_a_download_with_the_wrong_md5_leaves_nothing(tmp_path):
    source = tmp_path / "file.bin"
    source.write_bytes(b"not what was published")
    dest = tmp_path / "raw" / "file.bin"
    with pytest.raises(common.PrepError, match=r"has md5 [0-9a-f]{32}, expected 0{32}.*damaged"):
        common.download(source.as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a .partial


# ----------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("module,name", [
    ("os", "system"), ("posix", "system"), ("subprocess", "Popen"),
    ("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("__builtin__", "eval"), ("numpy", "load"), ("numpy.testing._private.utils", "runstring"),
    ("numpy._core.multiarray", "frombuffer"),
])
def test_a_pickle_naming_any_other_global_is_refused(tmp_path, module, name):
    """Only the constructors of arrays, dtypes, sets and bytes may be looked up: a pickle that
    merely names another callable (protocol 2: GLOBAL, then STOP) is refused before it is called."""
    path = tmp_path / "x.pkl"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n.")
    with pytest.raises(common.PrepError, match=re.escape(f"not a plain data pickle (it refers to {module}.{name})")):
        pickles.safe_load_pickle(path, "get a clean copy")
