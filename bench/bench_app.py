"""The app the benchmarks run: no-op tasks, broker from AFTERWORK_URL."""

from afterwork import Afterwork

jobs = Afterwork()


@jobs.task
async def noop(i: int) -> None:
    return None


@jobs.task
def noop_sync(i: int) -> None:
    return None
