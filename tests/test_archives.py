import io
import re
import tarfile
import zipfile

import pytest

from data_prep import cifar100, common, omniglot


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
        common.safe_extract(archive, dest)
    # Checked before anything is written: not even the good member is there.
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "out" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_zip_member_escaping_the_folder_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"x")
        zf.writestr("../../escaped.png", b"evil")
    with pytest.raises(common.PrepError, match=r"a.zip holds a member outside its folder \('../../escaped.png'\)"):
        common.safe_extract(archive, tmp_path / "out")
    with pytest.raises(common.PrepError, match="outside its folder"):
        common.open_zip(archive)  # what the Omniglot reader uses
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(common.PrepError, match="holds a link"):
        common.open_zip(archive)


def test_a_clean_archive_extracts(tmp_path):
    archive = tar_with(tmp_path / "a.tar.gz", (dict(name="top", type=tarfile.DIRTYPE), None),
                       (dict(name="top/sub/file.bin"), b"\x00\x01payload"))
    common.safe_extract(archive, tmp_path / "out")
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


def test_an_unwritable_root_is_one_line(tmp_path, capsys):
    from data_prep import mini_imagenet
    (tmp_path / "file").write_text("not a folder")
    code = common.run_cli(mini_imagenet.main, ["--root", str(tmp_path / "file"), "--source", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "check the path" in err[0]


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
        common.safe_extract(archive, dest)
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
        common.safe_extract(archive, dest)
    assert list(outside.iterdir()) == []
