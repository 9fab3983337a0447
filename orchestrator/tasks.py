"""django-q2 task entry points: thin, they pass ids to services."""

from orchestrator import notifications


def send_notifications(run_id, event):
    notifications.notifications_send(run_id=run_id, event=event)
