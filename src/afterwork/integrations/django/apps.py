"""The Django app (for ``INSTALLED_APPS``): it provides the ``afterwork_worker`` command."""

from __future__ import annotations

from django.apps import AppConfig


class AfterworkConfig(AppConfig):
    name = "afterwork.integrations.django"
    label = "afterwork"
    verbose_name = "afterwork"
