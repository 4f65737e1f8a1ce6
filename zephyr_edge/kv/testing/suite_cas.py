"""The compare-and-set part of :class:`~zephyr_edge.kv.testing.KVConformance`:
:meth:`KV.atomic_if` and :meth:`KV.scard` (mixed into the suite; usage: see
:mod:`zephyr_edge.kv.testing`)."""

from __future__ import annotations

import asyncio

import pytest

from zephyr_edge.kv.base import KV, Delete, Set, SetAdd, SetRemove

#: Bound of the concurrency tests, which must not hang on a deadlocked backend.
CONCURRENCY_BOUND_S = 60.0
#: Concurrent compare-and-set callers expecting the same current value of one key.
CAS_CALLERS = 20
#: Rounds of atomic_if (expecting a key absent) racing set_if_absent, and the extra delay
#: of the set_if_absent callers in each round.
CAS_RACE_ROUNDS = 6
CAS_RACE_STAGGER_S = 0.003
#: Members added before the conditional Set in that race, to widen a non-atomic backend's gap.
SLOW_MEMBERS = frozenset(b"m%d" % i for i in range(200))
#: Tasks incrementing one counter by compare-and-set, and increments each task makes.
CAS_COUNTER_TASKS = 8
CAS_INCREMENTS = 10
#: Conditional writes made while a reader checks it never sees one half-applied.
CAS_ROUNDS = 200
#: Reads the checking reader must make at least (so that the check really ran).
CAS_MIN_READS = 20
#: Keys written by each of those conditional writes.
CAS_WIDTH = 4

#: An expectation that does not hold: (value stored or None for absent, value expected).
FAILING_EXPECTATIONS = {
    "value-differs": (b"v1", b"v2"),
    "prefix-of-value": (b"abc", b"ab"),
    "longer-than-value": (b"ab", b"abc"),
    "last-byte-differs": (bytes(range(256)), bytes(range(255)) + b"\x00"),
    "expected-absent-but-present": (b"v", None),
    "expected-absent-but-empty-value": (b"", None),
    "expected-value-but-absent": (None, b"v"),
    "expected-empty-value-but-absent": (None, b""),
}


async def _state(kv: KV, values: list[str], sets: list[str]) -> tuple[list[bytes | None], list[set[bytes]]]:
    return await kv.get_many(values), [await kv.smembers(s) for s in sets]


class AtomicIfTests:
    """``atomic_if`` (conditional, all or nothing, one atomic step) and ``scard``."""

    @pytest.mark.asyncio
    async def test_atomic_if_applies_when_every_expectation_holds(self, kv, key):
        absent, present, empty, gone, s = key("absent"), key("present"), key("empty"), key("gone"), key("set")
        await kv.atomic([Set(present, bytes(range(256))), Set(empty, b""), Set(gone, b"old"), SetAdd(s, [b"m1"])])
        applied = await kv.atomic_if(
            {absent: None, present: bytes(range(256)), empty: b""},
            [
                Set(absent, b"now-here"),
                Set(present, b"replaced"),
                Delete(gone),
                SetAdd(s, [b"m2", b"m3"]),
                SetRemove(s, [b"m1"]),
                Set(empty, b"x"),
                Set(empty, b"last"),
            ],
        )
        assert applied is True, f"every expectation holds: atomic_if must return True, returned {applied!r}"
        got = await kv.get_many([absent, present, empty, gone])
        assert got == [b"now-here", b"replaced", b"last", None], f"after atomic_if: {got!r}"
        assert await kv.smembers(s) == {b"m2", b"m3"}, "the set changes of atomic_if were not applied"

    @pytest.mark.asyncio
    @pytest.mark.parametrize("case", sorted(FAILING_EXPECTATIONS))
    async def test_atomic_if_applies_nothing_when_an_expectation_fails(self, kv, key, case):
        stored, expected = FAILING_EXPECTATIONS[case]
        holds_a, failing, holds_b, absent = key("holds-a"), key("failing"), key("holds-b"), key("absent")
        written, s = key("written"), key("set")
        await kv.atomic([Set(holds_a, b"a"), Set(holds_b, b"b"), Set(written, b"before"), SetAdd(s, [b"m1"])])
        if stored is not None:
            await kv.set(failing, stored)
        values, sets = [holds_a, failing, holds_b, absent, written], [s]
        before = await _state(kv, values, sets)
        # the failing expectation first, in the middle and last: the others all hold
        orders = [[failing, holds_a, absent, holds_b], [holds_a, failing, holds_b], [holds_a, absent, failing]]
        wants = {holds_a: b"a", holds_b: b"b", absent: None, failing: expected}
        for order in orders:
            applied = await kv.atomic_if(
                {k: wants[k] for k in order},
                [
                    Set(written, b"after"),
                    Set(holds_a, b"changed"),
                    Set(absent, b"created"),
                    Delete(holds_b),
                    Set(failing, b"changed"),
                    SetAdd(s, [b"m2"]),
                    SetRemove(s, [b"m1"]),
                ],
            )
            assert applied is False, f"{case}: stored {stored!r}, expected {expected!r}: must return False, got {applied!r}"
            after = await _state(kv, values, sets)
            assert after == before, f"{case}: a failed atomic_if changed the data: {before!r} -> {after!r}"

    @pytest.mark.asyncio
    async def test_atomic_if_empty_ops_and_empty_expect(self, kv, key):
        k, s, other = key("k"), key("set"), key("other")
        await kv.set(k, b"v")
        assert await kv.atomic_if({k: b"v", other: None}, []) is True, "holding expectations and no ops: True"
        assert await kv.atomic_if({k: b"w"}, []) is False, "a pure check that fails: False"
        assert await kv.atomic_if({k: b"v"}, [SetAdd(s, []), SetRemove(s, [])]) is True
        assert await kv.get_many([k, other]) == [b"v", None], "a pure check must not write"
        assert await kv.smembers(s) == set()
        assert await kv.atomic_if({}, []) is True
        assert await kv.atomic_if({}, [Set(other, b"o"), SetAdd(s, [b"m"]), Delete(k)]) is True, (
            "no expectations: atomic_if is atomic and returns True"
        )
        assert await kv.get_many([k, other]) == [None, b"o"]
        assert await kv.smembers(s) == {b"m"}

    @pytest.mark.asyncio
    async def test_atomic_if_large_member_lists(self, kv, key):
        s, k = key("set"), key("k")
        members = {b"m%d" % i for i in range(10_000)}
        assert await kv.atomic_if({k: None}, [SetAdd(s, members), Set(k, b"1")]) is True
        assert await kv.smembers(s) == members, "atomic_if lost members of a large SetAdd"
        assert await kv.atomic_if({k: b"1"}, [SetRemove(s, members - {b"m0"})]) is True
        assert await kv.smembers(s) == {b"m0"}

    @pytest.mark.asyncio
    async def test_atomic_if_concurrent_exactly_one_wins(self, kv, second_kv, key):
        k, s = key("cas"), key("winners")
        await kv.set(k, b"v0")

        def call(i: int):
            return (second_kv if i % 2 else kv).atomic_if(
                {k: b"v0"}, [Set(k, f"caller-{i}".encode()), SetAdd(s, [str(i).encode()])]
            )

        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            results = await asyncio.gather(*(call(i) for i in range(CAS_CALLERS)))
        winners = [i for i, won in enumerate(results) if won is True]
        assert len(winners) == 1, f"{len(winners)} compare-and-set callers got True (expected exactly one): {winners}"
        assert all(r is False for i, r in enumerate(results) if i != winners[0]), f"results: {results!r}"
        stored = await kv.get(k)
        assert stored == f"caller-{winners[0]}".encode(), f"the winner wrote caller-{winners[0]}, stored {stored!r}"
        assert await kv.smembers(s) == {str(winners[0]).encode()}, "a losing caller applied some of its ops"

    @pytest.mark.asyncio
    async def test_atomic_if_expecting_absent_races_set_if_absent(self, kv, second_kv, key):
        # A key expected absent has nothing to lock: a plain writer must still not slip in
        # between the check and the write. The set_if_absent callers start a little later,
        # by more in each round, to land inside the conditional writes (slowed by a SetAdd).
        for round_ in range(CAS_RACE_ROUNDS):
            k, s = key(f"claim-{round_}"), key(f"claim-{round_}-set")

            async def call(i: int) -> bool:
                instance = second_kv if i % 2 else kv
                value = f"caller-{i}".encode()
                if i % 4 < 2:
                    return await instance.atomic_if({k: None}, [SetAdd(s, SLOW_MEMBERS), Set(k, value)])
                await asyncio.sleep(round_ * CAS_RACE_STAGGER_S * i / CAS_CALLERS)
                return await instance.set_if_absent(k, value)

            async with asyncio.timeout(CONCURRENCY_BOUND_S):
                results = await asyncio.gather(*(call(i) for i in range(CAS_CALLERS)))
            winners = [i for i, won in enumerate(results) if won is True]
            assert len(winners) == 1, (
                f"round {round_}: {len(winners)} of the atomic_if(expect absent) and set_if_absent callers got "
                f"True (expected one): {winners}"
            )
            assert await kv.get(k) == f"caller-{winners[0]}".encode()

    @pytest.mark.asyncio
    async def test_atomic_if_counter_loses_no_update(self, kv, second_kv, key):
        c = key("counter")
        successes = 0

        async def incrementer(instance: KV) -> None:
            nonlocal successes
            done = 0
            while done < CAS_INCREMENTS:
                current = await instance.get(c)
                new = str(int(current or b"0") + 1).encode()
                if await instance.atomic_if({c: current}, [Set(c, new)]):
                    done += 1
                    successes += 1

        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            await asyncio.gather(*(incrementer(second_kv if i % 2 else kv) for i in range(CAS_COUNTER_TASKS)))
        final = await kv.get(c)
        assert successes == CAS_COUNTER_TASKS * CAS_INCREMENTS
        assert final == str(successes).encode(), (
            f"{successes} compare-and-set increments succeeded but the counter reads {final!r}: updates were lost"
        )

    @pytest.mark.asyncio
    async def test_atomic_if_never_observed_half_applied(self, kv, second_kv, key):
        names, version = [key(f"pair-{i}") for i in range(CAS_WIDTH)], key("version")
        await kv.atomic([Set(n, b"0") for n in names])
        done = asyncio.Event()
        reads = 0

        async def writer() -> None:
            round_ = 0
            try:
                while round_ < CAS_ROUNDS or reads < CAS_MIN_READS:
                    expect = {version: str(round_).encode() if round_ else None}
                    round_ += 1
                    value = str(round_).encode()
                    applied = await kv.atomic_if(expect, [*(Set(n, value) for n in names), Set(version, value)])
                    assert applied is True, f"round {round_}: the only writer's expectation held, got {applied!r}"
            finally:
                done.set()

        async def reader() -> None:
            nonlocal reads
            while not done.is_set():
                values = await second_kv.get_many([*names, version])
                reads += 1
                whole = len(set(values[:-1])) == 1 and values[-1] in (None, values[0])
                assert whole, f"a reader saw a half-applied atomic_if: {values!r}"

        async with asyncio.timeout(CONCURRENCY_BOUND_S):
            await asyncio.gather(writer(), reader())
        assert reads >= CAS_MIN_READS

    # --- scard ---------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_scard(self, kv, key):
        s = key("set")
        assert await kv.scard(s) == 0, "an absent set has no members"
        await kv.sadd(s, b"a", b"", b"\x00", b"\xff")
        await kv.sadd(s, b"a")
        assert await kv.scard(s) == 4, "scard counts distinct members (the empty one too)"
        await kv.atomic([SetRemove(s, [b"a", b"not-there"])])
        assert await kv.scard(s) == 3
        await kv.atomic([SetRemove(s, [b"", b"\x00", b"\xff"])])
        assert await kv.scard(s) == 0, "removing every member empties the set"
        await kv.atomic([SetAdd(s, [b"m%d" % i for i in range(1500)])])
        assert await kv.scard(s) == 1500
        await kv.delete(s)
        assert await kv.scard(s) == 0, "a deleted set has no members"
