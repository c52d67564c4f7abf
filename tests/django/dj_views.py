"""Views (and the URLconf) of the Django test project."""

from __future__ import annotations

import json
from typing import Any

from dj_tasks import add
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from afterwork import after_response

#: Shared with the tests, which run the server in their own process.
state: dict[str, Any] = {}


def _call(name: str) -> None:
    state[name](name)


def after(request: HttpRequest) -> HttpResponse:
    after_response(_call, "first")
    request.background.add_task(_call, "second")  # type: ignore[attr-defined]
    return HttpResponse("ok")


def failing_after(request: HttpRequest) -> HttpResponse:
    after_response(_call, "broken")
    after_response(_call, "second")
    return HttpResponse("ok")


async def async_after(request: HttpRequest) -> HttpResponse:
    async def notify(label: str) -> None:
        state["second"](label)

    after_response(notify, "async view")
    return HttpResponse("ok")


def enqueue(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    result = add.enqueue(body["a"], body["b"])
    return JsonResponse({"id": result.id, "status": result.status})


async def aenqueue(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body)
    result = await add.aenqueue(body["a"], body["b"])
    return JsonResponse({"id": result.id, "status": result.status})


def result(request: HttpRequest, result_id: str) -> JsonResponse:
    found = add.get_result(result_id)
    return JsonResponse(
        {
            "status": found.status,
            "return_value": found.return_value if found.is_finished else None,
            "args": found.args,
        }
    )


urlpatterns = [
    path("after", after),
    path("failing-after", failing_after),
    path("async-after", async_after),
    path("enqueue", enqueue),
    path("aenqueue", aenqueue),
    path("result/<str:result_id>", result),
]
