"""Resolving paths inside a root through fds (csrc/rootfs.c, minibox.images.paths).

Each case runs twice: through openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
and through the fallback walk of one O_NOFOLLOW component at a time that
kernels without openat2 take; both must give the same answer.  No root needed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from minibox._native import lib
from minibox.errors import SetupError
from minibox.images.paths import make_mount_point, open_in_root, opened_root

MODES = {"openat2": 0, "walk": lib.MB_COMPAT_NO_OPENAT2}


@pytest.fixture(params=sorted(MODES))
def compat(request: pytest.FixtureRequest) -> int:
    return MODES[request.param]


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(root, host, root_fd): a rootfs with some files, and a decoy host dir beside it."""
    root = tmp_path / "root"
    host = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("inside\n")
    (root / "dir").mkdir()
    host.mkdir()
    (host / "passwd").write_text("HOST\n")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, host, fd
    os.close(fd)


def identity(fd: int) -> tuple[int, int]:
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def same(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def test_plain_path_and_dots(tree: tuple[Path, Path, int], compat: int) -> None:
    root, _, fd = tree
    assert identity(open_in_root(fd, "/etc/passwd", compat=compat)) == same(root / "etc/passwd")
    assert identity(open_in_root(fd, "etc//./passwd", compat=compat)) == same(root / "etc/passwd")
    assert identity(open_in_root(fd, "/", compat=compat)) == same(root)


@pytest.mark.parametrize("path", ["..", "../..", "/../../..", "dir/../../../..", "etc/../.."])
def test_dotdot_stops_at_the_root(tree: tuple[Path, Path, int], compat: int, path: str) -> None:
    root, _, fd = tree
    assert identity(open_in_root(fd, path, compat=compat)) == same(root)


@pytest.mark.parametrize("link", ["/", "..", "../..", "../../..", "/..", "./../../."])
def test_symlink_to_the_root_or_above_is_the_root(tree: tuple[Path, Path, int], compat: int, link: str) -> None:
    root, _, fd = tree
    (root / "dir" / "up").symlink_to(link)
    assert identity(open_in_root(fd, "/dir/up", compat=compat)) == same(root)
    assert identity(open_in_root(fd, "/dir/up/etc/passwd", compat=compat)) == same(root / "etc/passwd")


def test_absolute_symlinks_resolve_inside(tree: tuple[Path, Path, int], compat: int) -> None:
    root, host, fd = tree
    (root / "etc2").symlink_to("/etc")
    (root / "escape").symlink_to(str(host))          # a host path: inside, it does not exist
    (root / "dir" / "rel").symlink_to("../../../../etc/passwd")
    assert identity(open_in_root(fd, "/etc2/passwd", compat=compat)) == same(root / "etc/passwd")
    assert identity(open_in_root(fd, "/dir/rel", compat=compat)) == same(root / "etc/passwd")
    with pytest.raises(FileNotFoundError):
        open_in_root(fd, "/escape/passwd", compat=compat)


def test_nofollow_opens_the_link_itself(tree: tuple[Path, Path, int], compat: int) -> None:
    root, _, fd = tree
    (root / "link").symlink_to("/etc")
    opened = open_in_root(fd, "/link", nofollow=True, compat=compat)
    try:
        assert stat.S_ISLNK(os.fstat(opened).st_mode)
    finally:
        os.close(opened)
    assert identity(open_in_root(fd, "/link", compat=compat)) == same(root / "etc")


def test_loops_and_too_many_links_are_eloop(tree: tuple[Path, Path, int], compat: int) -> None:
    root, _, fd = tree
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(OSError) as info:
        open_in_root(fd, "/a", compat=compat)
    assert info.value.errno == errno.ELOOP
    # a chain of n links: the kernel's limit is 40 (MAXSYMLINKS)
    for n in range(1, 42):
        (root / f"chain{n}").symlink_to(f"chain{n - 1}" if n > 1 else "etc")
    assert identity(open_in_root(fd, "/chain40", compat=compat)) == same(root / "etc")
    with pytest.raises(OSError) as info:
        open_in_root(fd, "/chain41", compat=compat)
    assert info.value.errno == errno.ELOOP


def test_magic_links_are_refused(compat: int) -> None:
    # /proc/self/root and /proc/self/fd/N jump to wherever the kernel says:
    # RESOLVE_NO_MAGICLINKS refuses them; the walk treats them the same.
    with opened_root("/proc") as proc:
        for path in ("self/root", "self/cwd", "self/root/etc", "thread-self/root", f"{os.getpid()}/fd/0"):
            with pytest.raises(OSError) as info:
                open_in_root(proc, path, compat=compat)
            assert info.value.errno == errno.ELOOP, path
        # /proc/self itself is an ordinary symlink: fine
        assert identity(open_in_root(proc, "self", compat=compat)) == same(Path(f"/proc/{os.getpid()}"))


def test_a_file_in_the_middle_is_enotdir(tree: tuple[Path, Path, int], compat: int) -> None:
    _, _, fd = tree
    with pytest.raises(NotADirectoryError):
        open_in_root(fd, "/etc/passwd/x", compat=compat)


def test_make_mount_point_creates_only_inside(tree: tuple[Path, Path, int]) -> None:
    root, host, _ = tree
    (root / "mnt").symlink_to(str(host))      # absolute: inside the root it means root/<host path>
    (root / "up").symlink_to("../..")
    (root / "srv").symlink_to("/../../../dir")
    outside = set(os.listdir(root.parent))
    with pytest.raises(SetupError) as info:   # that path does not exist inside: nothing is created
        make_mount_point(str(root), "/mnt/a/b", directory=True)
    assert info.value.errno == errno.ENOENT
    make_mount_point(str(root), "/up/data/deeper", directory=True)
    make_mount_point(str(root), "/srv/file", directory=False)
    assert (root / "data" / "deeper").is_dir()
    assert (root / "dir" / "file").is_file()
    assert sorted(os.listdir(host)) == ["passwd"]
    assert set(os.listdir(root.parent)) == outside


def test_make_mount_point_failure_is_a_typed_error(tree: tuple[Path, Path, int]) -> None:
    root, _, _ = tree
    with pytest.raises(SetupError) as info:
        make_mount_point(str(root), "/etc/passwd/x", directory=True)
    assert info.value.step == "mount point" and info.value.errno == errno.ENOTDIR
    assert "/etc/passwd/x" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
