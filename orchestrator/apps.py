from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Pipelines"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.contrib import admin

        from orchestrator import checks  # noqa: F401  (registers the system checks)

        admin.site.site_header = "Fast-Flow"
        admin.site.site_title = "Fast-Flow"
        admin.site.index_title = "Pipelines, runs and settings"
