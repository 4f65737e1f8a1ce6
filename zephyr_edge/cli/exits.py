"""Exit statuses of every ``zephyr-edge`` command: the one set the commands return."""

#: Done.
OK = 0
#: The work failed (a backend, a target, a worker that cannot listen).
FAILED = 1
#: Bad configuration or bad arguments: nothing was tried.
USAGE = 2
