"""The code in docs/django.md runs as written."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dj_support import finished
from django.test import override_settings
from django.utils.module_loading import import_string

from afterwork.integrations.django import start_worker_in_thread, stop_worker_in_thread

DOC = Path(__file__).parents[2] / "docs" / "django.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def run(code: str, name: str) -> dict[str, Any]:
    if importlib.util.find_spec("django.tasks") is None:  # before Django 6.0: the backport
        code = code.replace("from django.tasks import", "from django_tasks import")
    module = types.ModuleType(name)
    sys.modules[name] = module  # so a worker can find its tasks by path
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module.__dict__


@pytest.fixture
def settings_block(tmp_path: Path) -> Iterator[dict[str, Any]]:
    namespace = run(BLOCKS[0], "django_docs_settings")
    tasks = namespace["TASKS"]
    tasks["default"]["OPTIONS"]["url"] = f"sqlite:///{tmp_path}/jobs.db"
    with override_settings(TASKS=tasks):
        yield namespace
    del sys.modules["django_docs_settings"]


def test_the_settings_name_real_things(settings_block: dict[str, Any]) -> None:
    assert "afterwork.integrations.django" in settings_block["INSTALLED_APPS"]
    import_string(settings_block["TASKS"]["default"]["BACKEND"])
    middleware = run(next(b for b in BLOCKS if b.startswith("MIDDLEWARE")), "django_docs_mw")
    import_string(middleware["MIDDLEWARE"][0])
    del sys.modules["django_docs_mw"]


def test_the_task_example(settings_block: dict[str, Any]) -> None:
    start_worker_in_thread()
    try:
        namespace = run(BLOCKS[1], "django_docs_tasks")
        result = finished(namespace["send_welcome_email"].get_result(namespace["result_id"]))
        assert result.return_value == "welcome email sent to ada@example.com"
        assert result.task.queue_name == "emails"
    finally:
        stop_worker_in_thread(grace_period=1)
        del sys.modules["django_docs_tasks"]
