"""Views: answer at once, hand the rest to afterwork."""

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from afterwork import after_response

from .tasks import send_welcome_email

try:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks import default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist

log = logging.getLogger("shop")


def audit(event: str, address: str) -> None:
    log.info("audit: %s %s", event, address)


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    address = request.POST["email"]
    result = send_welcome_email.enqueue(address)  # a durable job on afterwork
    after_response(audit, "signup", address)  # after the response is sent
    return JsonResponse({"email": address, "result_id": result.id, "status": result.status})


@require_GET
def task_result(request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        result = default_task_backend.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": f"no result {result_id}"}, status=404)
    succeeded = result.status == "SUCCESSFUL"
    return JsonResponse(
        {
            "id": result.id,
            "task": result.task.name,
            "status": result.status,
            "return_value": result.return_value if succeeded else None,
            "errors": [e.exception_class_path for e in result.errors],
        }
    )
