"""The example apps answer as their READMEs say, served by a real uvicorn server.

Each example is copied to the test's folder first: its job database is made
beside it, never in the repository.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import serve

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Callable[[str], types.ModuleType]]:
    loaded: list[types.ModuleType] = []

    def load(name: str) -> types.ModuleType:
        folder = tmp_path / name
        shutil.copytree(EXAMPLES / name, folder)
        spec = importlib.util.spec_from_file_location(f"example_{name}", folder / "app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded.append(module)
        return module

    yield load
    for module in loaded:
        module.jobs.close()
        module.local.close()
        del sys.modules[module.__name__]


@pytest.mark.parametrize("name", ["fastapi", "starlette"])
async def test_an_example_answers_404_for_a_job_id_it_does_not_know(
    example: Callable[[str], types.ModuleType], name: str
) -> None:
    app = example(name).app

    async with serve(app) as served, served.client() as client:
        missing = await client.get("/jobs/0123456789abcdef")
        posted = await client.post("/photos", params={"name": "cat.png"})
        known = await client.get(f"/jobs/{posted.json()['job']}")

    assert missing.status_code == 404
    assert "0123456789abcdef" in missing.text
    assert known.status_code == 200
    assert known.json()["status"] in {"queued", "running", "succeeded"}
