"""Routes of the vendor web app."""

from django.urls import path

from . import views

app_name = "web"

urlpatterns = [
    path("", views.saturday, name="home"),
    path("sw.js", views.service_worker, name="service-worker"),
    path("accounts/login/", views.SignInView.as_view(), name="login"),
    path("accounts/logout/", views.SignOutView.as_view(), name="logout"),
    path("accounts/logout/everywhere/", views.sign_out_everywhere, name="logout-everywhere"),
    path("weddings/<int:wedding_id>/", views.wedding, name="wedding"),
    path("weddings/<int:wedding_id>/state", views.wedding_state, name="wedding-state"),
]
