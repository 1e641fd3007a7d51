import io
import os
import re
import tarfile
import zipfile

import pytest

from data_prep import archives, cifar100, common, omniglot


def tar_with(path, *members):
    """A .tar.gz whose members are (TarInfo kwargs, bytes or None)."""
    with tarfile.open(path, "w:gz") as tf:
        for fields, data in members:
            fields = dict(fields)
            info = tarfile.TarInfo(fields.pop("name"))
            for k, v in fields.items():
                setattr(info, k, v)
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.mark.parametrize("member,message", [
    (dict(name="../escaped.txt"), "a member outside its folder"),
    (dict(name="ok/../../escaped.txt"), "a member outside its folder"),
    (dict(name="/tmp/escaped-absolute.txt"), "a member outside its folder"),
    (dict(name="link", type=tarfile.SYMTYPE, linkname="../../etc/passwd"), "a link"),
    (dict(name="hard", type=tarfile.LNKTYPE, linkname="/etc/passwd"), "a link"),
    (dict(name="dev", type=tarfile.CHRTYPE), "a special file"),
])
def test_tar_members_escaping_the_folder_are_refused(tmp_path, member, message):
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="good.txt"), b"fine"),
                       (member, None if "type" in member else b"evil"))
    dest = tmp_path / "out" / "inner"
    with pytest.raises(common.PrepError, match=f"a.tar.gz holds {message}.*refusing to extract"):
        archives.safe_extract(archive, dest)
    # Checked before anything is written: not even the good member is there.
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_zip_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"x")
        zf.writestr("../../escaped.png", b"evil")
    with pytest.raises(common.PrepError, match=r"a.zip holds a member outside its folder \('../../escaped.png'\)"):
        archives.safe_extract(archive, tmp_path / "out")
    with pytest.raises(common.PrepError, match="outside its folder"):
        archives.open_zip(archive)  # what the Omniglot reader uses
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(common.PrepError, match="holds a link"):
        archives.open_zip(archive)


def test_a_clean_archive_extracts(tmp_path):
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="top", type=tarfile.DIRTYPE), None),
                       (dict(name="top/sub/file.bin"), b"\x00\x01payload"))
    archives.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "sub" / "file.bin").read_bytes() == b"\x00\x01payload"


def test_cifar_preparation_refuses_a_traversal_archive(tmp_path, monkeypatch, capsys):
    archive = tar_with(tmp_path / cifar100.ARCHIVE, (dict(name="cifar-100-python/meta"), b"x"),
                       (dict(name="cifar-100-python/../../../evil"), b"evil"))
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(archive))
    from data_prep import cifar_fs
    code = common.run_cli(cifar_fs.main, ["--root", str(tmp_path / "data"), "--source", str(archive)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "holds a member outside its folder" in err[0]
    assert list((tmp_path / "data").iterdir()) == []


def test_omniglot_preparation_refuses_a_traversal_zip(tmp_path, monkeypatch):
    for name in omniglot.ARCHIVES:
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr(f"{name[:-4]}/../../../evil.png", b"evil")
        monkeypatch.setitem(omniglot.MD5, name, common.md5sum(tmp_path / name))
    with pytest.raises(common.PrepError, match="images_background.zip holds a member outside its folder"):
        omniglot.prepare(tmp_path / "data", tmp_path)


def test_md5_and_checksum_errors(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    assert common.md5sum(f) == "900150983cd24fb0d6963f7d28e17f72"  # RFC 1321 test vector
    common.verify_md5(f, "900150983cd24fb0d6963f7d28e17f72", "unused")
    with pytest.raises(common.PrepError, match=r"f.bin has md5 9001.*expected 0{32}.*; get it again"):
        common.verify_md5(f, "0" * 32, "get it again")


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in pieces (a bomb's content without holding it in memory)."""

    def __init__(self, size):
        self.left = size

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self):
        return True


def zip_of_zeros(path, sizes):
    """A deflated zip holding one file of zeros per size (zeros.0, zeros.1, ...)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, size in enumerate(sizes):
            with zf.open(f"top/zeros.{i}", "w", force_zip64=True) as out:
                src = Zeros(size)
                while block := src.read(1 << 20):
                    out.write(block)
    return path


def tar_gz_of_zeros(path, sizes):
    with tarfile.open(path, "w:gz") as tf:
        for i, size in enumerate(sizes):
            info = tarfile.TarInfo(f"top/zeros.{i}")
            info.size = size
            tf.addfile(info, io.BufferedReader(Zeros(size)))
    return path


BUILD = {"zip": zip_of_zeros, "tar.gz": tar_gz_of_zeros}


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path, kind, monkeypatch):
    def no_writing(*args):
        raise AssertionError("a member was being written")
    monkeypatch.setattr(archives, "_copy_new", no_writing)
    bomb = BUILD[kind](tmp_path / f"bomb.{kind}", [200 * archives.MB])
    assert bomb.stat().st_size < 1 * archives.MB  # 200 MB of zeros, compressed about 1000x
    limit = archives.default_limit(bomb)
    assert limit.total < 70 * archives.MB  # 64 MB + 20x its size
    dest = tmp_path / "out"
    with pytest.raises(common.PrepError) as e:
        archives.safe_extract(bomb, dest)
    assert str(e.value) == (
        f"{bomb}: its member 'top/zeros.0' expands to more than {limit.member / archives.MB:g} MB (the "
        f"limit per member); refusing to extract it (a decompression bomb, or not the expected file); "
        f"nothing was kept; if you trust the archive, raise the limit with --max-extract-mb")
    assert list(dest.iterdir()) == []
    if kind == "zip":
        with pytest.raises(common.PrepError, match="the limit per member"):
            archives.open_zip(bomb)  # what the Omniglot reader uses


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_a_member_over_its_limit_within_the_total_is_refused_before_anything_is_written(
        tmp_path, kind, monkeypatch):
    """The per-member limit is checked on the declared sizes too, not only while copying."""
    def no_writing(*args):
        raise AssertionError("a member was being written")
    monkeypatch.setattr(archives, "_copy_new", no_writing)
    archive = BUILD[kind](tmp_path / f"a.{kind}", [1 * archives.MB, 5 * archives.MB])
    with pytest.raises(common.PrepError, match=r"member 'top/zeros.1' expands to more than 2 MB "
                                               r"\(the limit per member\)"):
        archives.safe_extract(archive, tmp_path / "out", archives.ExtractLimit.mb(10, member_mb=2))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_the_limit_for_the_whole_archive_and_its_override(tmp_path, kind):
    archive = BUILD[kind](tmp_path / f"a.{kind}", [2 * archives.MB] * 3)
    limit = archives.ExtractLimit.mb(5, member_mb=3)
    with pytest.raises(common.PrepError, match=rf"a.{kind}: it expands to more than 5 MB \(the limit "
                                               r"for the whole archive\); refusing"):
        archives.safe_extract(archive, tmp_path / "out", limit)
    assert list((tmp_path / "out").iterdir()) == []
    archives.safe_extract(archive, tmp_path / "out", archives.ExtractLimit.mb(6, member_mb=2))  # exactly fits
    assert sorted(p.stat().st_size for p in (tmp_path / "out" / "top").iterdir()) == [2 * archives.MB] * 3


@pytest.mark.parametrize("kind", sorted(BUILD))
def test_sizes_are_counted_while_copying_too(tmp_path, kind, monkeypatch):
    """Declared sizes can lie: with the declarations believed (the check before extraction
    disabled), the bytes counted while copying still stop the bomb and remove what was written."""
    archive = BUILD[kind](tmp_path / f"a.{kind}", [1 * archives.MB, 1 * archives.MB, 30 * archives.MB])
    monkeypatch.setattr(archives._Meter, "declare", lambda self, name, size: None)
    dest = tmp_path / "out"
    with pytest.raises(common.PrepError, match=r"member 'top/zeros.2' expands to more than 4 MB \(the limit "
                                               r"per member\)"):
        archives.safe_extract(archive, dest, archives.ExtractLimit.mb(10, member_mb=4))
    assert list(dest.iterdir()) == []  # the two good members and the partial third are gone
    with pytest.raises(common.PrepError, match=r"it expands to more than 1.5 MB \(the limit for the whole"):
        archives.safe_extract(archive, dest, archives.ExtractLimit.mb(1.5))
    assert list(dest.iterdir()) == []
    if kind == "zip":  # reading members one by one, as the Omniglot reader does
        with archives.open_zip(archive, archives.ExtractLimit.mb(10, member_mb=4)) as zf:
            assert len(zf.read("top/zeros.0")) == archives.MB
            with pytest.raises(common.PrepError, match="'top/zeros.2' expands to more than 4 MB"):
                zf.read("top/zeros.2")


def test_extraction_never_overwrites_an_existing_file(tmp_path):
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="new.txt"), b"new"),
                       (dict(name="mine.txt"), b"evil"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("the user's")
    with pytest.raises(common.PrepError, match=r"cannot extract .*a.tar.gz: .*mine.txt already exists "
                                               r"\(extracting never overwrites a file\)"):
        archives.safe_extract(archive, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["mine.txt"]
    assert (tmp_path / "out" / "mine.txt").read_text() == "the user's"


def test_preparation_with_a_lowered_limit_is_one_line(tmp_path, monkeypatch, capsys):
    from data_prep import cifar_fs
    from prep_fixtures import make_cifar100
    archive = make_cifar100(tmp_path / cifar100.ARCHIVE)  # 1000 images of 3072 bytes: 3.1 MB
    monkeypatch.setitem(cifar100.MD5, cifar100.ARCHIVE, common.md5sum(archive))
    code = common.run_cli(cifar_fs.main, ["--root", str(tmp_path / "data"), "--source", str(archive),
                                          "--max-extract-mb", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {archive}: its member 'cifar-100-python/train' expands to more "
                             f"than 2 MB")
    assert "--max-extract-mb" in err[0]
    assert list((tmp_path / "data").iterdir()) == []  # no extraction folder, no lock
    with pytest.raises(SystemExit) as e:
        cifar_fs.main(["--root", str(tmp_path / "data"), "--max-extract-mb", "0"])
    assert e.value.code == 2
    assert "argument --max-extract-mb: must be a positive integer, got 0" in capsys.readouterr().err
    assert cifar100.EXTRACT_LIMIT.total >= 2 * 187 * archives.MB  # the real archive's 187 MB, twice


# ---------------------------------------------- member names that leave the folder, end to end
# The names test_prep_common.py gives _check_member directly, now inside real archives handed to
# safe_extract: the whole archive is refused, the error names the member, nothing is written.

# Windows drive forms, an absolute path (inside tmp_path, so that a write would be seen),
# and .. with either separator.
ESCAPING = ["C:evil", "C:/x", "C:\\x", "{tmp}/outside/abs.txt", "../up", "a/../../up", "..\\up",
            "a\\..\\..\\up"]


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_refused_and_nothing_written(tmp_path, archive, name):
    dest = tmp_path / "work" / "out"
    before = files_under(tmp_path)
    with pytest.raises(common.PrepError) as e:
        archives.safe_extract(archive, dest)
    assert f"{archive} holds a member outside its folder" in str(e.value)
    assert repr(name) in str(e.value) or repr("../" + name) in str(e.value), "the member is named"
    assert list(dest.iterdir()) == []
    assert files_under(tmp_path) == sorted(before + ["work", "work/out"])


@pytest.mark.parametrize("template", ESCAPING)
def test_zip_with_a_member_outside_the_folder_writes_nothing(tmp_path, template):
    name = template.format(tmp=tmp_path)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", b"fine")
        zf.writestr(name, b"evil")
    assert_refused_and_nothing_written(tmp_path, archive, name)


@pytest.mark.parametrize("template", ESCAPING)
def test_tar_with_a_member_outside_the_folder_writes_nothing(tmp_path, template):
    name = template.format(tmp=tmp_path)
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="good.txt"), b"fine"), (dict(name=name), b"evil"))
    assert_refused_and_nothing_written(tmp_path, archive, name)


def test_tar_member_through_a_link_already_in_the_folder_is_refused(tmp_path):
    """Every member must land inside dest, resolved: a plain member name that passes through a
    symbolic link already in dest (to a folder outside it) is refused too."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "link").symlink_to(outside, target_is_directory=True)
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="link/evil.txt"), b"evil"))
    with pytest.raises(common.PrepError, match=re.escape("holds a member outside its folder ('../link/evil.txt')")):
        archives.safe_extract(archive, dest)
    assert list(outside.iterdir()) == []


def test_zip_member_through_a_link_already_in_the_folder_is_refused(tmp_path):
    """As for tar: a member whose path passes through a symbolic link in dest (to a folder
    outside it) would land outside; the zip is refused and nothing is written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "link").symlink_to(outside, target_is_directory=True)
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("link/evil.txt", b"evil")
    with pytest.raises(common.PrepError, match=re.escape("holds a member outside its folder ('../link/evil.txt')")):
        archives.safe_extract(archive, dest)
    assert list(outside.iterdir()) == []
