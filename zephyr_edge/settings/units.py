"""Byte sizes: the one home of ``KiB`` and ``MiB`` (settings name sizes in these units)."""

KiB = 1024
MiB = 1024 * KiB
