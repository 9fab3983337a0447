"""pipeline_a: reads settings from environment variables and uses a package from
requirements.txt (humanize). Try it: GREETING=Hi python main.py"""
import os

import humanize

greeting = os.environ.get("GREETING", "Hello")
target = os.environ.get("TARGET", "world")
size = int(os.environ.get("DATA_SIZE", "123456789"))
print(f"{greeting}, {target}!")
print(f"run {os.environ.get('FASTFLOW_RUN_ID', 'local')} of {os.environ.get('FASTFLOW_PIPELINE', 'pipeline_a')}")
print(f"processing {humanize.naturalsize(size)} of data")
