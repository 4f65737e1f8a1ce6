"""The Lua side of :mod:`zephyr_edge.kv.redis`: :meth:`KV.atomic_if` as one script.

A script runs atomically on the server (no other command runs while it does), so the
comparison and the writes are one step. Every key the script touches is passed in
``KEYS`` (they share one hash tag, so on a Redis Cluster they live in one slot and the
script runs on its node). The script is sent by SHA (``EVALSHA``); a node that does not
have it yet answers ``NOSCRIPT`` and gets the source once (``EVAL``, which also caches it
there). Loading it up front with ``SCRIPT LOAD`` is avoided on purpose: coredis sends that
command to every node of a cluster, so one unreachable node (even a replica) would fail
calls whose own slot is fine.

The encoding (``KEYS`` and ``ARGV``), for ``n`` expectations and ``m`` operations:

- ``KEYS[1..n]``: the expected keys; ``KEYS[n+1..n+m]``: the key of each operation, in
  order (a key may appear several times).
- ``ARGV[1]``: ``n``. Then per expectation two arguments: ``"1"`` and the value it must
  hold, or ``"0"`` and ``""`` for a key that must be absent.
- Then per operation: its opcode (``S`` SET, ``D`` DEL, ``A`` SADD, ``R`` SREM), the number
  of arguments that follow, and those arguments (the value of a SET, the members of an
  SADD/SREM, nothing for DEL).

It returns 1 when it applied the operations, 0 when an expectation did not hold (then it
wrote nothing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from zephyr_edge.kv.base import Delete, Op, Set, SetAdd, SetRemove

#: Members per SADD/SREM call inside the script: Lua's ``unpack`` puts every argument on
#: its stack, which holds a few thousand values at most.
MEMBERS_PER_CALL = 1000

ATOMIC_IF = f"""
local n = tonumber(ARGV[1])
local a = 2
for i = 1, n do
  local current = redis.call('GET', KEYS[i])
  if ARGV[a] == '1' then
    if current ~= ARGV[a + 1] then return 0 end
  elseif current then
    return 0
  end
  a = a + 2
end
for i = n + 1, #KEYS do
  local op, count = ARGV[a], tonumber(ARGV[a + 1])
  local first = a + 2
  local last = first + count - 1
  a = last + 1
  if op == 'S' then
    redis.call('SET', KEYS[i], ARGV[first])
  elseif op == 'D' then
    redis.call('DEL', KEYS[i])
  else
    local command = op == 'A' and 'SADD' or 'SREM'
    for s = first, last, {MEMBERS_PER_CALL} do
      redis.call(command, KEYS[i], unpack(ARGV, s, math.min(s + {MEMBERS_PER_CALL - 1}, last)))
    end
  end
end
return 1
"""

#: The SHA1 digest ``EVALSHA`` names the script by.
ATOMIC_IF_SHA = hashlib.sha1(ATOMIC_IF.encode()).hexdigest()


def encode_atomic_if(expect: Mapping[str, bytes | None], ops: Sequence[Op]) -> tuple[list[str], list[bytes]]:
    """``(KEYS, ARGV)`` of :data:`ATOMIC_IF` for ``expect`` and ``ops``.

    ``ops`` must not hold set changes without members (the caller drops them).
    """
    keys = list(expect)
    args: list[bytes] = [str(len(keys)).encode()]
    for value in expect.values():
        args += [b"0", b""] if value is None else [b"1", bytes(value)]
    for op in ops:
        keys.append(op.key)
        if isinstance(op, Set):
            args += [b"S", b"1", bytes(op.value)]
        elif isinstance(op, Delete):
            args += [b"D", b"0"]
        elif isinstance(op, (SetAdd, SetRemove)):
            args += [b"A" if isinstance(op, SetAdd) else b"R", str(len(op.members)).encode(), *op.members]
        else:
            raise TypeError(f"unknown KV operation {op!r}")
    return keys, args
