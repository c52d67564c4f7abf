"""The afterwork app a Django project shares with its TASKS (``OPTIONS["app"]``), on the
broker a test names in DJANGO_TEST_BROKER_URL: what the command line loads."""

from __future__ import annotations

import os

from afterwork import Afterwork

jobs = Afterwork(os.environ.get("DJANGO_TEST_BROKER_URL", "memory://"))
