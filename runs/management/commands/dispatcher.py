import signal

from django.core.management.base import BaseCommand

from runs.loop import Dispatcher


class Command(BaseCommand):
    help = "Run the dispatcher loop: enqueue due runs and retries, re-sync pipelines."

    def handle(self, *args, **options):
        loop = Dispatcher()

        def stop(*_):
            loop.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        loop.forever()
