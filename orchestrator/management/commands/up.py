"""`python manage.py up`: everything for one machine, in one command.

Steps:
1. check the port is free (a clash is an error naming FASTFLOW_PORT);
2. migrate, sync pipelines, ensure the admin user (password generated and printed once);
3. start three children: daphne (ASGI: admin, API, websockets), the django-q2 cluster
   (workers) and the dispatcher loop;
4. on Ctrl-C or SIGTERM, stop them all (SIGTERM, then SIGKILL after a grace period), and
   if any child dies on its own, stop the rest and exit non-zero: no orphans either way.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from fastflow_site.children import child_env
from orchestrator.services import pipelines_sync_all


def _port_free(host, port):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror
    return None


def _killpg(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Command(BaseCommand):
    help = "Start Fast-Flow on this machine: web (admin, API, websockets), workers, dispatcher."

    def add_arguments(self, parser):
        parser.add_argument("--no-workers", action="store_true", help="serve only (workers run elsewhere)")
        parser.add_argument("--no-web", action="store_true", help="workers and dispatcher only (a worker host)")

    def handle(self, *args, **options):
        host, port = settings.FASTFLOW_HOST, settings.FASTFLOW_PORT
        if options["no_web"] and options["no_workers"]:
            raise CommandError("--no-web and --no-workers together leave nothing to run")
        problem = None if options["no_web"] else _port_free(host, port)
        if problem:
            raise CommandError(f"cannot listen on {host}:{port} ({problem}): set FASTFLOW_PORT or FASTFLOW_HOST")
        call_command("migrate", interactive=False, verbosity=0)
        report = pipelines_sync_all()
        self.stdout.write(f"pipelines: {len(report.created) + len(report.updated) + report.unchanged} found"
                          + (f", {len(report.skipped)} skipped (see sync_pipelines)" if report.skipped else ""))
        self._ensure_admin()
        call_command("check")

        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        children = {}
        if not options["no_web"]:
            children["web"] = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port), "--proxy-headers",
                               "fastflow_site.asgi:application"]
        if not options["no_workers"]:
            children["workers"] = manage + ["qcluster"]
            children["dispatcher"] = manage + ["dispatcher"]
        # Each child leads its own process group, so stopping reaches the q2 worker processes too.
        # FASTFLOW_CHILD_PROCESS: checks were run once, here; the web server alone pools.
        procs = {name: subprocess.Popen(cmd, cwd=settings.BASE_DIR, start_new_session=True,
                                        env=child_env(name, dict(os.environ)))
                 for name, cmd in children.items()}
        stopping = {"signal": None}

        def on_signal(signum, _frame):
            stopping["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        where = "workers only" if options["no_web"] else f"http://{host}:{port}/admin/"
        self.stdout.write(self.style.SUCCESS(f"Fast-Flow is up: {where}  (Ctrl-C stops it)"))
        exit_code = 0
        while stopping["signal"] is None:
            dead = [name for name, p in procs.items() if p.poll() is not None]
            if dead:
                self.stderr.write(f"{', '.join(dead)} exited unexpectedly (code "
                                  f"{procs[dead[0]].returncode}); stopping everything")
                exit_code = 1
                break
            time.sleep(0.3)
        self._stop(procs)
        if exit_code:
            raise CommandError("a component of Fast-Flow died; see the output above")
        self.stdout.write("Fast-Flow stopped.")

    def _stop(self, procs):
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # the leader stops its own children (q2 workers)
        deadline = time.monotonic() + settings.FASTFLOW_SHUTDOWN_GRACE  # in-flight runs may finish
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(p, signal.SIGKILL)  # whatever is left in its group
            p.wait()

    def _ensure_admin(self):
        User = get_user_model()
        name = settings.FASTFLOW_ADMIN_USER
        password = settings.FASTFLOW_ADMIN_PASSWORD
        user = User.objects.filter(username=name).first()
        if user is None:
            generated = not password
            password = password or secrets.token_urlsafe(12)
            User.objects.create_superuser(name, email="", password=password)
            if generated:
                self.stdout.write(self.style.WARNING(
                    f"created admin user {name!r} with password {password}  (shown once; set "
                    f"FASTFLOW_ADMIN_PASSWORD to choose it)"))
            else:
                self.stdout.write(f"created admin user {name!r} from FASTFLOW_ADMIN_PASSWORD")
        elif password and not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(f"admin user {name!r}: password set from FASTFLOW_ADMIN_PASSWORD")
        os.environ.pop("FASTFLOW_ADMIN_PASSWORD", None)
