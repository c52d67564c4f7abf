"""A periodic task for the integration tests: ``afterwork worker periodic_app:jobs``.

Each run appends its pid to ``ticks`` in ``AFTERWORK_TEST_MARKERS``.
"""

from __future__ import annotations

import os
from pathlib import Path

from afterwork import Afterwork

jobs = Afterwork()


@jobs.periodic(every="0.2s", name="tick", overlap=True)
def tick() -> None:
    folder = Path(os.environ["AFTERWORK_TEST_MARKERS"])
    fd = os.open(folder / "ticks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
