"""The shop's tasks: Django's @task, stored and run by afterwork."""

import time

try:
    from django.tasks import task  # Django 6.0+
except ImportError:
    from django_tasks import task  # the backport


@task(queue_name="emails", priority=10)
def send_welcome_email(address: str) -> str:
    time.sleep(0.5)  # talking to the mail provider
    return f"welcome email sent to {address}"


@task
def build_report(month: str) -> dict[str, object]:
    return {"month": month, "orders": 1284}
