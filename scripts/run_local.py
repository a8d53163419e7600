"""`make run`: a local Redis (unless RTAI_REDIS_URL is set), one worker and one gateway; Ctrl-C stops them all.

A thin wrapper: the logic lives in `rtai_client.launcher` (also `rtai run`), which documents the RTAI_* variables.
"""

from __future__ import annotations

import sys

from rtai_client.launcher import main

if __name__ == "__main__":
    sys.exit(main())
