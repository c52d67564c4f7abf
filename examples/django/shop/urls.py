from django.urls import path

from . import views

urlpatterns = [
    path("signup", views.signup),
    path("results/<str:result_id>", views.task_result),
]
