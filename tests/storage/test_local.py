"""The embedded file-system backend: the conformance suite plus local specifics."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from pathlib import Path

import pytest
import pytest_asyncio

from zephyr_edge import errors
from zephyr_edge.storage.local import OBJECTS_DIR, TEMP_PREFIX, LocalStorage
from zephyr_edge.storage.testing import StorageConformance, fetch, new_key, pattern

PROCESSES = 6
PROCESS_OBJECT_SIZE = 3 * 1024 * 1024


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


class TestLocalStorage(StorageConformance):
    @pytest_asyncio.fixture
    async def storage(self, tmp_path):
        async with LocalStorage.open(None, tmp_path / "data") as backend:
            yield backend
        assert temp_files(tmp_path) == [], "a temporary file was left behind"

    @pytest_asyncio.fixture
    async def second_storage(self, storage, tmp_path):
        async with LocalStorage.open(None, tmp_path / "data") as backend:
            yield backend

    @pytest_asyncio.fixture
    async def unreachable_storage(self, tmp_path):
        blocker = tmp_path / "a-file"
        blocker.write_bytes(b"not a folder")
        async with LocalStorage.open(None, blocker / "data") as backend:
            yield backend


# --- local specifics --------------------------------------------------------------------


def _write_in_process(data_dir: str, key: str, seed: int, size: int, barrier) -> None:
    """Child process: wait for the others, then put the same key as they do."""

    async def main() -> None:
        async with LocalStorage.open(None, Path(data_dir)) as storage:
            data = pattern(seed, size)

            async def chunks():
                for i in range(0, size, 65_536):
                    yield data[i : i + 65_536]
                    await asyncio.sleep(0)

            barrier.wait(30)
            for _ in range(3):
                await storage.put(key, chunks(), size)

    asyncio.run(main())


async def test_concurrent_writers_in_several_processes(tmp_path):
    key = new_key()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    sizes = [PROCESS_OBJECT_SIZE + 4_099 * i for i in range(PROCESSES)]
    processes = [
        context.Process(target=_write_in_process, args=(str(tmp_path), key, 300 + i, sizes[i], barrier))
        for i in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        async with LocalStorage.open(None, tmp_path) as storage:
            candidates = [pattern(300 + i, sizes[i]) for i in range(PROCESSES)]
            seen = []
            while any(p.is_alive() for p in processes):
                try:
                    seen.append(await fetch(storage, key))
                except errors.NotFound:
                    pass
                await asyncio.sleep(0.005)
            for process in processes:
                await asyncio.to_thread(process.join, 60)
                assert process.exitcode == 0
            final = await fetch(storage, key)
            assert final in candidates
            assert all(observed in candidates for observed in seen), "a reader saw a partial object"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(10)
    assert temp_files(tmp_path) == []


async def test_data_survives_reopen(tmp_path):
    key, data = new_key(), pattern(9, 500_000)
    async with LocalStorage.open(None, tmp_path) as storage:
        await storage.put_bytes(key, data)
    async with LocalStorage.open(None, tmp_path) as storage:
        assert await fetch(storage, key) == data
    assert (tmp_path / OBJECTS_DIR / key).read_bytes() == data


async def test_objects_live_under_data_dir(tmp_path):
    async with LocalStorage.open(None, tmp_path / "new" / "dir") as storage:
        assert storage.root == (tmp_path / "new" / "dir" / OBJECTS_DIR).absolute()
        assert storage.root.is_dir()
        await storage.put_bytes("ab/cd/ef", b"x")
    assert (tmp_path / "new" / "dir" / OBJECTS_DIR / "ab" / "cd" / "ef").read_bytes() == b"x"


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "ab/../../escape", "ab//cd", "ab/./cd", "ab/cd/", "nul\x00byte",
            "back\\slash", f"ab/{TEMP_PREFIX}x"],
)
async def test_invalid_keys_refused(tmp_path, key):
    async with LocalStorage.open(None, tmp_path / "data") as storage:
        for call in (
            lambda: storage.put_bytes(key, b"x"), lambda: storage.get(key), lambda: storage.head(key),
            lambda: storage.delete(key),
        ):
            with pytest.raises(errors.BadRequest):
                await call()
    assert not (tmp_path / "escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


async def test_open_survives_uncreatable_folder_and_ping_names_it(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    async with LocalStorage.open(None, blocker) as storage:
        with pytest.raises(errors.BackendUnavailable) as raised:
            await storage.ping()
    assert str(blocker / OBJECTS_DIR) in str(raised.value)
    assert "cannot create the objects folder" in caplog.text


async def test_ping_reports_a_read_only_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    async with LocalStorage.open(None, tmp_path) as storage:
        storage.root.chmod(0o500)
        try:
            with pytest.raises(errors.BackendUnavailable, match="not writable"):
                await storage.ping()
        finally:
            storage.root.chmod(0o700)


async def test_ping_reports_a_folder_removed_after_open(tmp_path):
    async with LocalStorage.open(None, tmp_path) as storage:
        await storage.ping()
        storage.root.rmdir()
        with pytest.raises(errors.BackendUnavailable, match="objects folder"):
            await storage.ping()
        with pytest.raises(errors.BackendUnavailable):
            await storage.put_bytes("ab/cd/ef", b"x")
        assert not storage.root.exists(), "an operation must not recreate the objects folder"


async def test_wrong_announced_size_leaves_nothing(tmp_path):
    async with LocalStorage.open(None, tmp_path) as storage:
        key = new_key()

        async def chunks():
            yield b"12345"

        for announced in (4, 6):
            with pytest.raises(errors.BackendError):
                await storage.put(key, chunks(), announced)
            assert await storage.head(key) is None
    assert temp_files(tmp_path) == []
