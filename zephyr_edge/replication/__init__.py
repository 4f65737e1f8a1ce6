"""Multi-region replication (docs/replication.md): the outbox, senders, receivers and catch-up.

Data path: a client write → :class:`~zephyr_edge.catalog.records.Catalog` records it in the
:mod:`~zephyr_edge.replication.outbox` in the same atomic KV step → a
:mod:`~zephyr_edge.replication.sender` of the region (one worker per target, under a lease)
delivers it with :mod:`~zephyr_edge.replication.client` → the other region's
:mod:`~zephyr_edge.replication.receiver` applies it without recording it again. The
:mod:`~zephyr_edge.replication.antientropy` pass (periodic, or ``zephyr-edge replicate
--resync``) sends whatever a region still lacks. Wire details: :mod:`.protocol`.
"""
