"""The code in docs/web.md, docs/starlette.md and docs/fastapi.md runs as written.

Each page's Python blocks, in order, make one module; it is served by a real
uvicorn server and its routes are called the way the pages describe.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from afterwork import JobStatus

from .conftest import serve

DOCS = Path(__file__).parents[2] / "docs"
Page = Callable[[str], types.ModuleType]


@pytest.fixture
def page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], types.ModuleType]]:
    """Runs a page's code in a module of its own, in a temporary folder (for jobs.db)."""
    monkeypatch.chdir(tmp_path)
    modules: list[types.ModuleType] = []

    def load(name: str) -> types.ModuleType:
        path = DOCS / name
        code = "\n".join(re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL))
        module = types.ModuleType(f"docs_{path.stem}_example")
        module.__file__ = str(path)
        sys.modules[module.__name__] = module
        modules.append(module)
        exec(compile(code, str(path), "exec"), module.__dict__)
        return module

    yield load
    for module in modules:
        del sys.modules[module.__name__]


def lines(out: str) -> set[str]:
    return set(out.strip().splitlines())


async def test_web_md(page: Page, capsys: pytest.CaptureFixture[str]) -> None:
    module = page("web.md")
    async with serve(module.app) as server, server.client() as client:
        body = (await client.post("/signup", params={"email": "ada@example.com"})).json()
        assert body["email"] == "ada@example.com"
        job = module.jobs.job(body["thumbnail_job"])
        assert await job.aresult(timeout=5) == "avatar-thumb.png"
    assert lines(capsys.readouterr().out) == {
        "welcome email sent to ada@example.com",
        "signup of ada@example.com recorded",
    }
    await module.jobs.aclose()


async def test_starlette_md(page: Page, capsys: pytest.CaptureFixture[str]) -> None:
    module = page("starlette.md")
    async with serve(module.app) as server, server.client() as client:
        email = {"email": "ada@example.com"}
        assert (await client.post("/signup", params=email)).json() == email
        assert (await client.post("/register", params=email)).json() == {
            "registered": "ada@example.com"
        }
        assert (await client.post("/login", params=email)).json() == {"ok": True}
        assert (await client.get("/articles/7")).json() == {"article": 7}
        upload = await client.post("/photos", params={"photo": "cat.png"})
        assert upload.status_code == 202
        job_id = upload.json()["job"]
        assert await module.jobs.job(job_id).aresult(timeout=5) == "cat-thumb.png"
        status = (await client.get(f"/jobs/{job_id}")).json()
        assert status == {"status": JobStatus.SUCCEEDED.value}
    assert lines(capsys.readouterr().out) == {
        "welcome email sent to ada@example.com",
        "audit: signup ada@example.com",
        "audit: register ada@example.com",
        "audit: login ada@example.com",
        "article 7 viewed",
    }
    await module.jobs.aclose()


async def test_fastapi_md(page: Page, capsys: pytest.CaptureFixture[str]) -> None:
    module = page("fastapi.md")
    async with serve(module.app) as server, server.client() as client:
        signup = await client.post("/signup", json={"email": "ada@example.com"})
        assert signup.json() == {"id": 1, "email": "ada@example.com"}
        login = await client.post("/login", params={"email": "ada@example.com"})
        assert login.json() == {"ok": True}
        assert (await client.get("/articles/7")).json() == {"article": 7}
        upload = await client.post("/photos", params={"photo": "cat.png"})
        assert upload.status_code == 202
        assert await module.jobs.job(upload.json()["job"]).aresult(timeout=5) == "cat-thumb.png"
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "startup: open pools; afterwork starts right after"
    assert out[-1] == "shutdown: afterwork's work has finished; close pools"
    assert set(out[1:-1]) == {
        "welcome email sent to ada@example.com",
        "audit: signup ada@example.com",
        "audit: login ada@example.com",
        "article 7 viewed",
        "audit: read 7",
    }
    await module.jobs.aclose()
