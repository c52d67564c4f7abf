"""One small harness per library for ``bench/redis_peers.py``.

Each module defines the library's no-op task (which calls
:func:`peers.common.record`), how its producer enqueues, and how its worker is
started, and runs as ``python -m peers.<library> <phase>`` in that library's
own virtualenv (afterwork's in the project's environment).
"""
