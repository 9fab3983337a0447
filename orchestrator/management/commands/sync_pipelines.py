from django.core.management.base import BaseCommand

from orchestrator.models import Pipeline
from orchestrator.services import pipelines_sync_all


class Command(BaseCommand):
    help = "Discover pipelines in the pipelines dir and print a table of what was found."

    def handle(self, *args, **options):
        report = pipelines_sync_all()
        rows = [("ID", "NAME", "METADATA", "STATUS")]
        for p in Pipeline.objects.filter(missing=False):
            if p.all_errors:
                status = "ERRORS: " + " | ".join(p.all_errors)
            elif not p.is_enabled:
                status = "valid (disabled)"
            else:
                status = "valid"
            if p.warnings:
                status += "  (warnings: " + " | ".join(p.warnings) + ")"
            rows.append((p.id, p.name, p.metadata_file or "-", status))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            self.stdout.write("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
        for p in Pipeline.objects.filter(missing=True):
            self.stdout.write(f"{p.id}: missing (folder removed; history kept)")
        for s in report.skipped:
            self.stdout.write(self.style.WARNING(f"skipped {s['folder']}: {s['reason']}"))
        self.stdout.write(
            f"{len(report.created)} new, {len(report.updated)} updated, "
            f"{len(report.missing)} newly missing, {report.unchanged} unchanged"
        )
