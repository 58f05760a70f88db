from django.urls import path

from apps.showcase import views

app_name = "showcase"

urlpatterns = [
    path("", views.index, name="index"),
]
