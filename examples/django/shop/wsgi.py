"""WSGI entry point; it also runs the tasks in this process, so one command runs the shop."""

import os

from django.core.wsgi import get_wsgi_application

from afterwork.integrations.django import start_worker_in_thread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_wsgi_application()

# An embedded worker: no second process to run. For more throughput, drop this
# line and run `python manage.py afterwork_worker` (on as many machines as needed).
start_worker_in_thread()
