"""The private cache that native code is built into and loaded from: the native CPU library
(kernels/cpu/native.py) and the CPU emulator's libraries (kernels/emulate/build.py).

Loading a shared library runs its constructors, so whoever can write into the cache can run code
in every process that loads from it. The rules:

  - the cache folders are created 0700 (each missing component, not only the last);
  - a cache folder, or a file read from one, that is group- or world-writable or owned by another
    user is refused with a one-line CacheSecurityError, and so is a file that is a symbolic link;
  - each built library has a record beside it (the same name with .json) holding its SHA-256; a
    library is used only if its bytes hash to the recorded value. The library is opened once, its
    owner, mode and hash checked through that descriptor, and on Linux it is loaded through
    /proc/self/fd/N, so the bytes checked are the bytes loaded.

A library without a record, or whose hash does not match, is not loaded: the builder compiles it
again and replaces it. Builds of one cache folder are serialised by an advisory lock (.build.lock),
so processes that start together compile once.

The folder above the cache root (e.g. ~/.cache) is not checked; the files' own checks cover a
folder swapped in from above, since a swapped-in file is owned by whoever planted it.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

RECORD_SUFFIX = ".json"
_LOADED_FDS = []   # descriptors of the libraries loaded through /proc/self/fd (see load_library)


class CacheSecurityError(RuntimeError):
    """A cache folder or file that another user could have written; the message is one line."""


def root() -> Path:
    """$MINIGRAD_CACHE_DIR, else ~/.cache/minigrad: the folder that holds every native cache."""
    d = os.environ.get("MINIGRAD_CACHE_DIR")
    return Path(d) if d else Path.home() / ".cache" / "minigrad"


def _refusal(path: Path, st: os.stat_result, what: str) -> str | None:
    """Why `path` (a folder or file with status `st`) may not be trusted, or None."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return (f"refusing the native-code cache: {what} {path} is owned by uid {st.st_uid}, not by this user "
                f"(uid {uid}); set MINIGRAD_CACHE_DIR to a folder of your own")
    writers = [who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others")) if st.st_mode & bit]
    if writers:
        return (f"refusing the native-code cache: {what} {path} is writable by {' and '.join(writers)} "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod go-w on it, or set MINIGRAD_CACHE_DIR "
                "to a private folder")
    return None


def private_dir(leaf: Path, top: Path | None = None) -> Path:
    """Create `leaf` and its missing parents up to `top` (default: the cache root) with mode 0700,
    then check that every folder from `top` down to `leaf` is this user's and writable by no one
    else. Returns leaf; raises CacheSecurityError naming the first folder that fails."""
    leaf = Path(leaf)
    top = Path(top) if top is not None else root()
    chain = [leaf, *leaf.parents]
    try:
        chain = chain[: chain.index(top) + 1]
    except ValueError:           # leaf is not below top: check leaf alone
        chain = [leaf]
    for folder in reversed(chain):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:   # a parent above `top` is missing
            os.makedirs(folder.parent, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
        st = os.lstat(folder)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(folder)          # a symlinked cache root is allowed; what it points to is checked
        if not stat.S_ISDIR(st.st_mode):
            raise CacheSecurityError(f"refusing the native-code cache: {folder} is not a folder")
        why = _refusal(folder, st, "folder")
        if why:
            raise CacheSecurityError(why)
    return leaf


def open_checked(path: Path) -> int:
    """A read-only descriptor of `path`, after checking through it that the file is a regular file
    (not a symbolic link), owned by this user and writable by no one else. FileNotFoundError if
    it is absent; CacheSecurityError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if os.path.islink(path):
            raise CacheSecurityError(f"refusing the native-code cache: {path} is a symbolic link") from None
        if isinstance(e, FileNotFoundError):
            raise
        raise CacheSecurityError(f"refusing the native-code cache: cannot open {path} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        why = None if stat.S_ISREG(st.st_mode) else f"refusing the native-code cache: {path} is not a regular file"
        why = why or _refusal(Path(path), st, "file")
        if why:
            raise CacheSecurityError(why)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sha256_fd(fd)
    finally:
        os.close(fd)


def record_path(lib: Path) -> Path:
    return Path(lib).with_suffix(RECORD_SUFFIX)


def read_record(lib: Path) -> dict | None:
    """The record beside `lib` (checked like the library), or None if it is absent or unreadable."""
    try:
        fd = open_checked(record_path(lib))
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None


def write_record(lib: Path, record: dict) -> None:
    """Write `lib`'s record atomically (a private temp file renamed into place)."""
    path = record_path(lib)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".record-")   # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(tmp_lib: Path, lib: Path, record: dict | None = None) -> str:
    """Move a freshly built library into place and record its hash (with `record`'s extra fields);
    returns the hash. The library is replaced first: a crash in between leaves a library without a
    matching record, which is rebuilt, never loaded."""
    os.chmod(tmp_lib, 0o700)
    digest = sha256_file(tmp_lib)
    os.replace(tmp_lib, lib)
    write_record(lib, {**(record or {}), "sha256": digest})
    return digest


def verified(lib: Path) -> dict | None:
    """`lib`'s record if the library is there, passes the checks and hashes to the recorded value;
    None if it is absent, has no record or does not match (build it again). CacheSecurityError if
    a file is one that must not be trusted."""
    record = read_record(lib)
    if record is None:
        return None
    try:
        fd = open_checked(lib)
    except FileNotFoundError:
        return None
    try:
        return record if _sha256_fd(fd) == record["sha256"] else None
    finally:
        os.close(fd)


def load_library(lib: Path) -> ctypes.CDLL:
    """ctypes.CDLL of `lib`, loaded only if it hashes to its record; the bytes hashed are the bytes
    loaded where /proc/self/fd exists. CacheSecurityError if it does not match (changed since the
    build) or cannot be trusted."""
    record = read_record(lib)
    if record is None:
        raise CacheSecurityError(f"refusing to load {lib}: it has no hash record ({record_path(lib).name})")
    fd = open_checked(lib)
    try:
        if _sha256_fd(fd) != record["sha256"]:
            raise CacheSecurityError(f"refusing to load {lib}: its SHA-256 does not match the one recorded "
                                     "when it was built")
        via_fd = Path(f"/proc/self/fd/{fd}")
        if not via_fd.exists():
            os.close(fd)
            return ctypes.CDLL(str(lib))
        cdll = ctypes.CDLL(str(via_fd))
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    # The descriptor stays open as long as the library stays loaded (ctypes never unloads one): the
    # dynamic loader knows the library by the name /proc/self/fd/N, and a closed N reused for another
    # library would be taken for this one.
    _LOADED_FDS.append(fd)
    return cdll


@contextlib.contextmanager
def build_lock(folder: Path):
    """Hold an exclusive advisory lock on folder/.build.lock while building (a no-op where flock
    is unavailable): a second process waits, then finds the library built."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(Path(folder) / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:          # a file system without flock: build unserialised (still atomic)
            pass
        yield
    finally:
        os.close(fd)
