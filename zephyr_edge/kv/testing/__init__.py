"""The KV conformance suite: every KV backend, built-in or third-party, runs it.

Subclass :class:`KVConformance` in a test module (the class name must start with ``Test``)
and provide the backend through fixtures, defined in the subclass, in the test module or in
a ``conftest.py``::

    import pytest
    import pytest_asyncio

    from zephyr_edge.kv.testing import KVConformance
    from mypackage.kv import MyKV


    @pytest_asyncio.fixture
    async def kv(tmp_path):                 # required: a ready, opened backend
        async with MyKV.open(MyKV.Options(url="..."), tmp_path) as kv:
            yield kv


    @pytest_asyncio.fixture
    async def kv2():                        # optional: a second instance opened on the same
        async with MyKV.open(...) as kv:    # data (a second worker); default: ``kv`` itself
            yield kv


    @pytest_asyncio.fixture
    async def unreachable_kv(tmp_path):     # optional: the backend pointed at nothing (closed
        async with MyKV.open(MyKV.Options(url="http://127.0.0.1:1"), tmp_path) as kv:
            yield kv                        # port, unusable folder); default: those tests skip


    @pytest.fixture
    def secrets():                          # optional: strings no error message may contain
        return ["the-password"]             # (put one in unreachable_kv's options)


    class TestMyKV(KVConformance):
        pass

The suite adds one fixture, available to your own tests in the subclass too:

- ``key``: a :class:`~zephyr_edge.kv.testing.keys.KeyFactory`; ``key("name")`` is
  ``{ze-test-<uuid>}:name``, unique to the test, one hash tag per test (``key("name",
  group="b")`` uses a second tag); every key made is deleted through ``kv`` afterwards.
  Nothing is ever flushed, so a shared server is fine.

The suite marks its tests with ``@pytest.mark.asyncio`` and its async fixtures with
``pytest_asyncio.fixture``, so it runs in pytest-asyncio's strict mode as well as in auto
mode. Declare your own async fixtures with ``pytest_asyncio.fixture``. Assertions carry
their own messages; for pytest's full diffs add
``pytest.register_assert_rewrite("zephyr_edge.kv.testing")`` to your ``conftest.py``.
"""

from zephyr_edge.kv.testing.keys import KeyFactory
from zephyr_edge.kv.testing.suite import KVConformance

__all__ = ["KVConformance", "KeyFactory"]
