"""Where the ranks of a data-parallel training meet: rank 0's port and how long they wait.

Plain Python (no torch), so that the launcher (`tasks/ranks.py`) can use it without loading the
training stack.
"""

from __future__ import annotations

import socket

# How long ranks wait for each other: to form the group, and at any one exchange of gradients.
RENDEZVOUS_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port free on this machine now, for a rank 0 started here to listen on."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
