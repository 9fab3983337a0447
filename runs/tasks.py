"""django-q2 task entry points: thin, they load ids and call services."""

from runs import services


def execute_run(run_id):
    services.run_execute(run_id=run_id)


def reattach_run(run_id):
    services.run_reattach(run_id=run_id)
