"""Settings of the small Django project the Django tests serve (and their worker processes load)."""

from __future__ import annotations

import importlib.util
import os

SECRET_KEY = "afterwork-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "dj_views"
# dj_tasks is an app, as a project's tasks module would be in one: a worker imports a
# Django task's module only from the installed apps (or finds it already imported).
INSTALLED_APPS = ["afterwork.integrations.django", "dj_tasks"]
if importlib.util.find_spec("django_tasks") is not None:  # the backport, before Django 6.0
    INSTALLED_APPS.insert(0, "django_tasks")
MIDDLEWARE = ["afterwork.integrations.django.AfterworkMiddleware"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
LOGGING_CONFIG = None


def tasks_setting(url: str) -> dict[str, object]:
    return {
        "default": {
            "BACKEND": "afterwork.integrations.django.AfterworkBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"url": url},
        }
    }


TASKS = tasks_setting(os.environ.get("DJANGO_TEST_BROKER_URL", "memory://"))
