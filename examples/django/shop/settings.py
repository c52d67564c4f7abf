"""Settings of the example shop: afterwork runs Django's tasks, and after-response work."""

import importlib.util
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

INSTALLED_APPS = [
    "afterwork.integrations.django",  # the afterwork_worker command
]
if importlib.util.find_spec("django.tasks") is None:  # before Django 6.0: the backport
    INSTALLED_APPS.insert(0, "django_tasks")

MIDDLEWARE = [
    "afterwork.integrations.django.AfterworkMiddleware",  # request.background, after_response
    "django.middleware.common.CommonMiddleware",
]

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}

TASKS = {
    "default": {
        "BACKEND": "afterwork.integrations.django.AfterworkBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"url": f"sqlite:///{BASE_DIR / 'afterwork.db'}"},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "shop": {"handlers": ["console"], "level": "INFO"},
        "afterwork": {"handlers": ["console"], "level": "INFO"},
    },
}
