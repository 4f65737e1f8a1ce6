"""Objects as files under ``<ZE_WORKER_DATA_DIR>/objects/<key>``: the embedded backend.

- Writes are atomic: the bytes go to a temporary file in the object's own folder, are
  flushed and fsynced, then ``os.replace``-d over the final name (atomic on POSIX, also
  between processes) and the folder is fsynced. Concurrent writers, in one process or
  several on the same host, each write their own temporary file; the last rename wins
  whole, and a reader that opened the previous file keeps reading it.
- A failed or cancelled write removes its temporary file; nothing partial is visible.
  (A process killed mid-write leaves a ``.ze-tmp-*`` file that no key can name.)
- All file I/O runs in worker threads (:func:`asyncio.to_thread`), never on the loop.
- Keys are relative ``/``-separated paths; ``..``, ``.``, empty segments, absolute paths,
  backslashes and NUL are refused with :class:`~zephyr_edge.errors.BadRequest`.
- The objects folder is created at open when missing; if that fails, open still succeeds
  and :meth:`LocalStorage.ping` (and every operation) reports the folder problem as
  :class:`~zephyr_edge.errors.BackendUnavailable`. An operation never creates the objects
  folder itself, so an unmounted volume is not silently replaced by an empty folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from zephyr_edge.errors import BackendError, BackendUnavailable, BadRequest, NotFound
from zephyr_edge.storage.base import CHUNK_SIZE, Blob, ObjectInfo, Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Sub-folder of the data dir holding the objects.
OBJECTS_DIR = "objects"
#: Prefix of temporary files; a key segment may not start with it.
TEMP_PREFIX = ".ze-tmp-"


def _validate_key(key: str) -> tuple[str, ...]:
    """The path segments of ``key``; :class:`BadRequest` if it could escape or collide."""
    if not isinstance(key, str) or not key:
        raise BadRequest("an object key must be a non-empty string", field="key")
    if "\x00" in key or "\\" in key:
        raise BadRequest(f"invalid object key {key!r}: NUL and backslash are not allowed", field="key")
    if key.startswith("/"):
        raise BadRequest(f"invalid object key {key!r}: must be relative", field="key")
    segments = tuple(key.split("/"))
    for segment in segments:
        if segment in ("", ".", "..") or segment.startswith(TEMP_PREFIX):
            raise BadRequest(f"invalid object key {key!r}: bad path segment {segment!r}", field="key")
    return segments


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalBlob(Blob):
    """An open file being read from ``start`` to ``end``; the file is closed when done.

    The descriptor is held from :meth:`LocalStorage.get` until the chunks are exhausted,
    the iterator is closed, or :meth:`aclose` is called (``async with blob:`` works too).
    """

    def __init__(self, storage: LocalStorage, key: str, fd: int, size: int, start: int, end: int):
        self.size, self.start, self.end = size, start, end
        self._storage = storage
        self._key = key
        self._fd: int | None = fd

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            offset = self.start
            while offset < self.end and self._fd is not None:
                length = min(CHUNK_SIZE, self.end - offset)
                chunk = await self._storage._run("read", self._key, os.pread, self._fd, length, offset)
                if not chunk:
                    raise BackendError(self._storage.name, f"read {self._key!r}: file ended at byte {offset} of {self.end}")
                offset += len(chunk)
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing a file opened for reading does not block

    async def __aenter__(self) -> LocalBlob:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            os.close(fd)


class LocalStorage(Storage):
    """Objects as files in one folder of the local file system."""

    Options = None
    name = "local"

    def __init__(self, root: Path):
        #: the folder holding the objects
        self.root = root

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, options: None, data_dir: Path) -> AsyncIterator[LocalStorage]:
        """Create ``<data_dir>/objects`` if missing (a failure is reported by :meth:`ping`)."""
        root = Path(data_dir).absolute() / OBJECTS_DIR
        try:
            await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("%s: cannot create the objects folder %s: %s", cls.name, root, exc.strerror or exc)
        yield cls(root)

    # --- the boundary ----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_validate_key(key))

    def _check_root(self) -> None:
        """Raise :class:`BackendUnavailable` unless the objects folder exists (blocking)."""
        try:
            mode = os.stat(self.root).st_mode
        except OSError as exc:
            raise BackendUnavailable(
                self.name, f"objects folder {self.root} is not available ({exc.strerror or exc}); check ZE_WORKER_DATA_DIR"
            ) from exc
        if not stat.S_ISDIR(mode):
            raise BackendUnavailable(self.name, f"objects folder {self.root} is not a folder; check ZE_WORKER_DATA_DIR")

    def _guarded(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` (in a thread); an OSError with the objects folder gone is
        reported as that, with the OSError as cause."""
        try:
            return func(*args)
        except OSError as exc:
            try:
                self._check_root()
            except BackendUnavailable as unavailable:
                raise unavailable from exc
            raise

    async def _run(
        self, action: str, key: str | None, func: Callable[..., T], *args: Any,
        abandon: Callable[[T], None] | None = None,
    ) -> T:
        """``func(*args)`` off the loop, translating OSError into BackendError."""
        try:
            return await _in_thread(self._guarded, abandon, func, *args)
        except OSError as exc:
            where = f"{action} {key!r}" if key is not None else action
            raise BackendError(self.name, f"{where}: {exc.strerror or exc} (in {self.root})") from exc

    # --- writes ----------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterator[bytes], size: int | None = None) -> None:
        path = self._path(key)
        fd, temp = await self._run("put", key, self._make_temp, path, abandon=_discard_temp)
        try:
            written = 0
            async for chunk in chunks:
                written += len(chunk)
                if size is not None and written > size:
                    raise BackendError(self.name, f"put {key!r}: the data is longer than the announced {size} bytes")
                await self._run("put", key, _write_all, fd, chunk)
            if size is not None and written != size:
                raise BackendError(self.name, f"put {key!r}: got {written} bytes, {size} were announced")
            committing, fd = fd, -1  # _commit owns (and closes) the descriptor from here
            await self._run("put", key, _commit, committing, temp, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard, fd, temp))
            raise

    def _make_temp(self, path: Path) -> tuple[int, str]:
        self._check_root()  # never create the objects folder itself (an unmounted volume)
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)

    async def delete(self, key: str) -> None:
        await self._run("delete", key, self._unlink, self._path(key))

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return
        _fsync_dir(path.parent)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, key: str, start: int = 0, end: int | None = None) -> Blob:
        opened = await self._run("get", key, self._open_for_read, self._path(key), abandon=_close_opened)
        if opened is None:
            raise NotFound(f"no object {key!r} in {self.name} storage")
        fd, size = opened
        return LocalBlob(self, key, fd, size, start, size if end is None else end)

    def _open_for_read(self, path: Path) -> tuple[int, int] | None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return None
        try:
            info = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(info.st_mode):  # a folder: no object of that name
            os.close(fd)
            return None
        return fd, info.st_size

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._run("head", key, self._stat, self._path(key))

    def _stat(self, path: Path) -> ObjectInfo | None:
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._check_root()
            return None
        return ObjectInfo(size=info.st_size) if stat.S_ISREG(info.st_mode) else None

    async def ping(self) -> None:
        """The objects folder exists and a file can be created in it."""
        await self._run("ping", None, self._probe)

    def _probe(self) -> None:
        self._check_root()
        try:
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX + "ping-", dir=self.root)
        except OSError as exc:
            raise BackendUnavailable(
                self.name, f"objects folder {self.root} is not writable ({exc.strerror or exc})"
            ) from exc
        _discard(fd, temp)


async def _in_thread(func: Callable[..., T], abandon: Callable[[T], None] | None, *args: Any) -> T:
    """``func(*args)`` in a worker thread.

    If the caller is cancelled meanwhile, wait for the thread to finish before
    propagating (a thread cannot be interrupted, and each call is one bounded file
    operation), so that no thread still uses a descriptor the caller's clean-up closes;
    a result the caller will never see is handed to ``abandon`` (to close what it opened).
    """
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            result = await future
            if abandon is not None:
                await asyncio.to_thread(abandon, result)
        raise


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _commit(fd: int, temp: str, path: Path) -> None:
    """fsync and close ``fd``, rename ``temp`` over ``path``, fsync the folder.

    Always closes ``fd``; removes ``temp`` when it fails."""
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _discard(fd: int, temp: str) -> None:
    """Close (when ``fd`` >= 0) and remove a temporary file, ignoring errors."""
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(temp)


def _discard_temp(made: tuple[int, str]) -> None:
    _discard(*made)


def _close_opened(opened: tuple[int, int] | None) -> None:
    if opened is not None:
        with contextlib.suppress(OSError):
            os.close(opened[0])
