"""The tests of :class:`KVConformance` (usage: see :mod:`zephyr_edge.kv.testing`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from zephyr_edge.errors import BackendUnavailable
from zephyr_edge.kv.base import KV, Delete, Set, SetAdd, SetRemove
from zephyr_edge.kv.testing.keys import KeyFactory
from zephyr_edge.kv.testing.suite_cas import AtomicIfTests

#: An unreachable backend must fail within this many seconds.
UNREACHABLE_BOUND_S = 10.0
#: Bound of the concurrency tests, which must not hang on a deadlocked backend.
CONCURRENCY_BOUND_S = 60.0
#: Concurrent set_if_absent callers on one key.
NX_CALLERS = 50
#: Concurrent incr calls on one key.
INCR_CALLS = 200
#: Atomic writes made while a reader checks it never sees one half-applied.
ATOMIC_ROUNDS = 200
#: Reads the checking reader must make at least (so that the check really ran).
ATOMIC_MIN_READS = 20
#: Keys written by each of those atomic writes.
ATOMIC_WIDTH = 4

BINARY_VALUES = {
    "empty": b"",
    "nul": b"\x00",
    "nul-inside": b"a\x00b\x00",
    "all-bytes": bytes(range(256)),
    "not-utf8": b"\xff\xfe\xc3\x28\x80",
}
UNICODE_NAMES = ["clé", "日本語", "emoji-🚀", "space and:colon", "ß-ø-Ω"]
UNREACHABLE_KEY = "{ze-test-unreachable}:key"

_CALLS: dict[str, Callable[[KV], Awaitable[object]]] = {
    "ping": lambda kv: kv.ping(),
    "get": lambda kv: kv.get(UNREACHABLE_KEY),
    "get_many": lambda kv: kv.get_many([UNREACHABLE_KEY, UNREACHABLE_KEY + "2"]),
    "set": lambda kv: kv.set(UNREACHABLE_KEY, b"value"),
    "set_if_absent": lambda kv: kv.set_if_absent(UNREACHABLE_KEY, b"value"),
    "delete": lambda kv: kv.delete(UNREACHABLE_KEY),
    "incr": lambda kv: kv.incr(UNREACHABLE_KEY),
    "atomic": lambda kv: kv.atomic([Set(UNREACHABLE_KEY, b"v"), SetAdd(UNREACHABLE_KEY + "s", [b"m"])]),
    "atomic_if": lambda kv: kv.atomic_if({UNREACHABLE_KEY: None}, [Set(UNREACHABLE_KEY, b"v")]),
    "scard": lambda kv: kv.scard(UNREACHABLE_KEY),
    "smembers": lambda kv: kv.smembers(UNREACHABLE_KEY),
    "sismember": lambda kv: kv.sismember(UNREACHABLE_KEY, b"m"),
}


def _optional_fixture(request: pytest.FixtureRequest, name: str, default: object) -> object:
    """The value of fixture ``name`` if the test can see one, else ``default``."""
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError as exc:
        if exc.argname != name:  # the fixture exists but one of its own dependencies does not
            raise
        return default


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


class KVConformance(AtomicIfTests):
    """Behaviour every :class:`~zephyr_edge.kv.base.KV` backend must have (the
    compare-and-set tests live in :mod:`zephyr_edge.kv.testing.suite_cas`)."""

    # --- fixtures ------------------------------------------------------------------------
    # ``kv`` comes from the user. The optional ones are looked up by name, so that they may
    # be defined in the subclass, the test module or a conftest.py (a default defined here
    # would shadow the last two).

    @pytest.fixture
    def second_kv(self, request: pytest.FixtureRequest, kv: KV) -> KV:
        return _optional_fixture(request, "kv2", kv)

    @pytest.fixture
    def unreachable(self, request: pytest.FixtureRequest) -> KV:
        found = _optional_fixture(request, "unreachable_kv", None)
        if found is None:
            pytest.skip("no `unreachable_kv` fixture: the unreachable-backend tests do not run")
        return found

    @pytest.fixture
    def secret_strings(self, request: pytest.FixtureRequest) -> list[str]:
        return [s for s in _optional_fixture(request, "secrets", []) if s]

    @pytest_asyncio.fixture
    async def key(self, kv: KV) -> AsyncIterator[KeyFactory]:
        keys = KeyFactory()
        yield keys
        await keys.cleanup(kv)

    # --- plain values ------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_get_missing_is_none(self, kv, key):
        assert await kv.get(key("missing")) is None

    @pytest.mark.asyncio
    async def test_set_then_get_and_overwrite(self, kv, key):
        k = key("value")
        await kv.set(k, b"first")
        assert await kv.get(k) == b"first"
        await kv.set(k, b"second")
        assert await kv.get(k) == b"second", "set must replace the previous value"

    @pytest.mark.asyncio
    async def test_delete(self, kv, key):
        k = key("value")
        await kv.set(k, b"v")
        await kv.delete(k)
        assert await kv.get(k) is None
        await kv.delete(k)  # missing is fine
        await kv.delete(key("never-written"))

    @pytest.mark.asyncio
    async def test_get_many_in_order_with_none_for_missing(self, kv, key):
        a, b, missing = key("a"), key("b"), key("missing")
        await kv.set(a, b"A")
        await kv.set(b, b"B")
        got = await kv.get_many([b, missing, a, b])
        assert got == [b"B", None, b"A", b"B"], f"get_many returned {got!r}"
        assert await kv.get_many([]) == []

    @pytest.mark.asyncio
    async def test_get_many_across_hash_tags(self, kv, key):
        names = [key("k", group=f"g{i}") for i in range(8)]
        for i, k in enumerate(names[::2]):
            await kv.set(k, f"v{i}".encode())
        want = [f"v{i // 2}".encode() if i % 2 == 0 else None for i in range(len(names))]
        got = await kv.get_many(names)
        assert got == want, f"get_many across tags returned {got!r}, expected {want!r}"

    @pytest.mark.asyncio
    async def test_binary_values_round_trip(self, kv, key):
        keys = {name: key(f"bin-{name}") for name in BINARY_VALUES}
        for name, value in BINARY_VALUES.items():
            await kv.set(keys[name], value)
        for name, value in BINARY_VALUES.items():
            got = await kv.get(keys[name])
            assert got == value, f"{name}: wrote {value!r}, read {got!r}"
        got_many = await kv.get_many(list(keys.values()))
        assert got_many == list(BINARY_VALUES.values()), f"get_many returned {got_many!r}"

    @pytest.mark.asyncio
    async def test_large_value(self, kv, key):
        k = key("large")
        value = bytes(range(256)) * 4096  # 1 MiB
        await kv.set(k, value)
        got = await kv.get(k)
        assert got == value, f"1 MiB value came back as {len(got or b'')} bytes, not equal"

    @pytest.mark.asyncio
    async def test_unicode_keys(self, kv, key):
        keys = [key(name) for name in UNICODE_NAMES]
        for i, k in enumerate(keys):
            await kv.set(k, str(i).encode())
        for i, k in enumerate(keys):
            assert await kv.get(k) == str(i).encode(), f"key {k!r} lost its value"
        assert await kv.get_many(keys) == [str(i).encode() for i in range(len(keys))]
        s = key(UNICODE_NAMES[1] + "-set")
        await kv.sadd(s, "ü".encode())
        assert await kv.smembers(s) == {"ü".encode()}
        assert await kv.incr(key(UNICODE_NAMES[2] + "-counter")) == 1

    @pytest.mark.asyncio
    async def test_writes_visible_to_a_second_instance(self, kv, second_kv, key):
        k, s = key("shared"), key("shared-set")
        await kv.set(k, b"from-1")
        await kv.atomic([SetAdd(s, [b"m"])])
        assert await second_kv.get(k) == b"from-1"
        assert await second_kv.smembers(s) == {b"m"}
        await second_kv.delete(k)
        assert await kv.get(k) is None

    # --- set_if_absent and incr ----------------------------------------------------------

    @pytest.mark.asyncio
    async def test_set_if_absent(self, kv, key):
        k = key("nx")
        assert await kv.set_if_absent(k, b"first") is True
        assert await kv.set_if_absent(k, b"second") is False
        assert await kv.get(k) == b"first", "set_if_absent must not overwrite"
        await kv.delete(k)
        assert await kv.set_if_absent(k, b"third") is True, "a deleted key is absent again"
        assert await kv.get(k) == b"third"

    @pytest.mark.asyncio
    async def test_set_if_absent_concurrent_exactly_one_wins(self, kv, second_kv, key):
        k = key("nx-race")
        calls = [(second_kv if i % 2 else kv).set_if_absent(k, f"caller-{i}".encode()) for i in range(NX_CALLERS)]
        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            results = await asyncio.gather(*calls)
        winners = [i for i, won in enumerate(results) if won is True]
        assert len(winners) == 1, f"{len(winners)} callers got True (expected exactly one): {winners}"
        assert all(r is False for i, r in enumerate(results) if i != winners[0])
        stored = await kv.get(k)
        assert stored == f"caller-{winners[0]}".encode(), f"the winner wrote caller-{winners[0]}, stored {stored!r}"

    @pytest.mark.asyncio
    async def test_incr(self, kv, key):
        k = key("counter")
        assert await kv.incr(k) == 1, "an absent counter counts as 0"
        assert await kv.incr(k) == 2
        assert await kv.get(k) == b"2", "a counter reads back as its decimal digits"
        other = key("counter-from-value")
        await kv.set(other, b"41")
        assert await kv.incr(other) == 42

    @pytest.mark.asyncio
    async def test_incr_concurrent(self, kv, second_kv, key):
        k = key("counter-race")
        calls = [(second_kv if i % 2 else kv).incr(k) for i in range(INCR_CALLS)]
        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            results = await asyncio.gather(*calls)
        assert sorted(results) == list(range(1, INCR_CALLS + 1)), "every incr must return a distinct new value"
        assert await kv.get(k) == str(INCR_CALLS).encode()

    # --- atomic --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_atomic_applies_every_op_in_order(self, kv, key):
        a, b, gone, s, t = key("a"), key("b"), key("gone"), key("set"), key("set-deleted")
        await kv.set(gone, b"old")
        await kv.atomic([SetAdd(t, [b"x"])])
        await kv.atomic([
            Set(a, b"1"),
            Set(a, b"2"),
            Set(b, b"b"),
            Delete(gone),
            SetAdd(s, [b"m1", b"m2", b"m3"]),
            SetRemove(s, [b"m2", b"not-there"]),
            Delete(t),
            Set(key("later-deleted"), b"x"),
            Delete(key("later-deleted")),
        ])
        got = await kv.get_many([a, b, gone, key("later-deleted")])
        assert got == [b"2", b"b", None, None], f"after atomic: {got!r}"
        assert await kv.smembers(s) == {b"m1", b"m3"}
        assert await kv.smembers(t) == set(), "Delete must remove a set too"

    @pytest.mark.asyncio
    async def test_atomic_edge_cases(self, kv, key):
        await kv.atomic([])
        s = key("set")
        await kv.atomic([SetAdd(s, []), SetRemove(s, [])])  # empty changes are no-ops
        assert await kv.smembers(s) == set()
        await kv.atomic([SetRemove(s, [b"absent"]), Delete(key("absent"))])
        assert await kv.smembers(s) == set()

    @pytest.mark.asyncio
    async def test_atomic_never_observed_half_applied(self, kv, second_kv, key):
        names = [key(f"pair-{i}") for i in range(ATOMIC_WIDTH)]
        await kv.atomic([Set(n, b"0") for n in names])
        done = asyncio.Event()
        reads = 0

        async def writer() -> None:
            round_ = 0
            while round_ < ATOMIC_ROUNDS or reads < ATOMIC_MIN_READS:
                round_ += 1
                await kv.atomic([Set(n, str(round_).encode()) for n in names])
            done.set()

        async def reader() -> None:
            nonlocal reads
            while not done.is_set():
                values = await second_kv.get_many(names)
                reads += 1
                assert len(set(values)) == 1, f"a reader saw a half-applied atomic write: {values!r}"

        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            await asyncio.gather(writer(), reader())
        assert reads >= ATOMIC_MIN_READS

    # --- sets ----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_sets(self, kv, key):
        s = key("set")
        assert await kv.smembers(s) == set(), "an absent set is empty"
        assert await kv.sismember(s, b"m") is False
        members = {b"m", b"", b"\x00nul", b"\xff\xfe"}
        await kv.sadd(s, *members)
        await kv.sadd(s, b"m")  # adding twice is fine
        assert await kv.smembers(s) == members
        for member in members:
            assert await kv.sismember(s, member) is True, f"{member!r} should be a member"
        assert await kv.sismember(s, b"other") is False
        await kv.atomic([SetRemove(s, members - {b"m"})])
        assert await kv.smembers(s) == {b"m"}
        await kv.atomic([SetRemove(s, [b"m"])])
        assert await kv.smembers(s) == set(), "removing the last member empties the set"
        await kv.sadd(s, b"again")
        await kv.delete(s)
        assert await kv.smembers(s) == set(), "delete must remove a set"

    @pytest.mark.asyncio
    async def test_concurrent_set_adds_lose_nothing(self, kv, second_kv, key):
        s = key("set-race")
        calls = [(second_kv if i % 2 else kv).sadd(s, f"m{i}".encode()) for i in range(NX_CALLERS)]
        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            await asyncio.gather(*calls)
        got = await kv.smembers(s)
        assert got == {f"m{i}".encode() for i in range(NX_CALLERS)}, f"{NX_CALLERS - len(got)} members lost"

    # --- health --------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_ping_when_healthy(self, kv):
        assert await kv.ping() is None

    @pytest.mark.asyncio
    @pytest.mark.parametrize("call", sorted(_CALLS))
    async def test_unreachable_backend_fails_fast(self, unreachable, secret_strings, call):
        for attempt in ("first", "second"):  # a backend that retries setup must stay bounded
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as caught:
                async with asyncio.timeout(UNREACHABLE_BOUND_S * 2):
                    await _CALLS[call](unreachable)
            elapsed = time.monotonic() - started
            assert elapsed < UNREACHABLE_BOUND_S, f"{call} ({attempt} call) took {elapsed:.1f} s to fail"
            exc = caught.value
            assert exc.__cause__ is not None, "chain the client library's exception: raise ... from exc"
            for linked in _chain(exc):
                text = f"{linked} {linked!r}"
                leaked = [s for s in secret_strings if s in text]
                assert not leaked, f"a secret appears in the error chain: {type(linked).__name__}"
