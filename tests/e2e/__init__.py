"""End-to-end support: deploy real apps through the official ``zephyr-agent`` (npm).

``tests.e2e.agent`` installs the agents, stubs the control plane, builds app folders and
runs deploys; ``tests.e2e.recorder`` is a recording fake of the worker used only to test
that harness. ``WIRE.md`` beside this file documents the agents' observed wire traffic.
"""
