"""Named crash points for the crash-safety tests.

``ORCH_FAILPOINTS=after_intent,mid_fetch`` makes the process SIGKILL itself when it
reaches one of those points, exactly like a power cut: no cleanup, no finally.
Unset (always, outside tests), each check is one dict lookup.
"""

from __future__ import annotations

import os
import signal

#: The points a tick passes, in order (and, at its end, ``after_notify_send``: a
#: notification sent and not yet recorded, see tests/notify/test_delivery.py).
POINTS = ("after_intent", "after_submit", "mid_poll", "mid_fetch", "after_fetch")


def hit(name: str) -> None:
    wanted = os.environ.get("ORCH_FAILPOINTS")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
