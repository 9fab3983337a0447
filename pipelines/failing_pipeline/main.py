"""failing_pipeline: fails on purpose with a traceback and a non-zero exit code, to show
how failures look (status failed, reason exit_code)."""


def load_config():
    raise ValueError("config value 'threshold' is missing")


print("starting, about to fail")
load_config()
