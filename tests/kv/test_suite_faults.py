"""The KV conformance suite catches broken backends: deliberately faulty variants of the
local backend run the suite's ``atomic_if`` tests, which must fail them (and pass the real
one, run through the same harness, so a failure is the fault's doing, not the harness')."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import pytest

from zephyr_edge.kv.base import Op
from zephyr_edge.kv.local import LocalKV
from zephyr_edge.kv.testing import KVConformance, KeyFactory
from zephyr_edge.kv.testing.suite_cas import FAILING_EXPECTATIONS


class IgnoresExpectations(LocalKV):
    """``atomic_if`` that always applies (as if it were ``atomic``)."""

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        await self.atomic(ops)
        return True


class CheckThenWrite(LocalKV):
    """``atomic_if`` whose check and write are two steps: another caller fits in between."""

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        current = await self.get_many(list(expect))
        if current != list(expect.values()):
            return False
        await asyncio.sleep(0)
        await self.atomic(ops)
        return True


class ChecksFirstOnly(LocalKV):
    """``atomic_if`` that only checks its first expectation."""

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        return await super().atomic_if(dict(list(expect.items())[:1]), ops)


class AbsentIsEmpty(LocalKV):
    """``atomic_if`` that does not tell an absent key from an empty value."""

    async def atomic_if(self, expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> bool:
        current = await self.get_many(list(expect))
        if [c or b"" for c in current] != [w or b"" for w in expect.values()]:
            return False
        return await super().atomic_if(dict(zip(expect, current)), ops)


def _failing(case: str) -> tuple[str, dict]:
    return "test_atomic_if_applies_nothing_when_an_expectation_fails", {"case": case}


#: broken backend -> the suite tests (name, parameters) that must each fail it.
MUST_FAIL: dict[type[LocalKV], list[tuple[str, dict]]] = {
    IgnoresExpectations: [
        *(_failing(case) for case in sorted(FAILING_EXPECTATIONS)),
        ("test_atomic_if_empty_ops_and_empty_expect", {}),
        ("test_atomic_if_concurrent_exactly_one_wins", {}),
        ("test_atomic_if_expecting_absent_races_set_if_absent", {}),
        ("test_atomic_if_counter_loses_no_update", {}),
    ],
    CheckThenWrite: [
        ("test_atomic_if_concurrent_exactly_one_wins", {}),
        ("test_atomic_if_expecting_absent_races_set_if_absent", {}),
        ("test_atomic_if_counter_loses_no_update", {}),
    ],
    ChecksFirstOnly: [_failing("value-differs"), _failing("expected-value-but-absent")],
    AbsentIsEmpty: [_failing("expected-absent-but-empty-value"), _failing("expected-empty-value-but-absent")],
}
CASES = [(cls, name, params) for cls, tests in MUST_FAIL.items() for name, params in tests]
#: Every atomic_if/scard test of the suite, each parameter set: the real backend passes them.
SUITE_TESTS = sorted(
    {(name, tuple(sorted(params.items()))) for _, name, params in CASES}
    | {(name, ()) for name in dir(KVConformance) if name.startswith(("test_atomic_if", "test_scard"))}
    - {("test_atomic_if_applies_nothing_when_an_expectation_fails", ())}
)


def _id(value: object) -> str:
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (dict, tuple)):
        return "-".join(str(v) for _, v in (value.items() if isinstance(value, dict) else value)) or "all"
    return str(value)


@contextlib.asynccontextmanager
async def two_instances(cls: type[LocalKV], folder: Path) -> AsyncIterator[tuple[LocalKV, LocalKV]]:
    async with cls.open(None, folder) as kv, cls.open(None, folder) as kv2:
        yield kv, kv2


async def run_suite_test(kv: LocalKV, kv2: LocalKV, name: str, params: dict) -> AssertionError | None:
    """Run one test of the suite as pytest would; the assertion it failed with, if any."""
    test = getattr(KVConformance(), name)
    keys = KeyFactory()
    available = {"kv": kv, "second_kv": kv2, "key": keys, **params}
    try:
        await test(**{p: available[p] for p in inspect.signature(test).parameters})
    except AssertionError as failed:
        return failed
    finally:
        await keys.cleanup(kv)
    return None


@pytest.mark.parametrize(("cls", "name", "params"), CASES, ids=_id)
async def test_the_suite_fails_a_broken_atomic_if(tmp_path, cls, name, params):
    async with two_instances(cls, tmp_path) as (kv, kv2):
        failed = await run_suite_test(kv, kv2, name, params)
    assert failed is not None, f"{name}{params or ''} passed {cls.__name__}: {cls.__doc__}"


@pytest.mark.parametrize(("name", "params"), SUITE_TESTS, ids=_id)
async def test_the_same_harness_passes_the_real_backend(tmp_path, name, params):
    async with two_instances(LocalKV, tmp_path) as (kv, kv2):
        failed = await run_suite_test(kv, kv2, name, dict(params))
    assert failed is None, f"{name}{dict(params) or ''} failed LocalKV: {failed}"

