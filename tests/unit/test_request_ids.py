"""Request ids: unique within a process and across forked workers (granian forks its workers)."""

from __future__ import annotations

import os

from replication.observability import _request_ids


def test_ids_are_distinct_and_a_forked_child_draws_its_own_prefix():
    first, second = _request_ids.next(), _request_ids.next()
    assert first != second and len(first) == len(second) == 16
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave without running the parent's cleanup
        os.write(write, _request_ids.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    # Same counter position in both processes, so only a new prefix keeps the child's ids apart.
    assert child[:10] != first[:10]
    assert _request_ids.next()[:10] == first[:10]
