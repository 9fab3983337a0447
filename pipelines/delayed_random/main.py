"""delayed_random: works for about 20 seconds, then succeeds or fails at random (exit 1),
to show retries. DELAY_SECONDS shortens it; FAIL_PROBABILITY (0..1, default 0.5) tunes it."""
import os
import random
import sys
import time

total = int(os.environ.get("DELAY_SECONDS", "20"))
chance = float(os.environ.get("FAIL_PROBABILITY", "0.5"))
for i in range(1, total + 1):
    print(f"working {i}/{total}", flush=True)
    time.sleep(1)
if random.random() < chance:
    print(f"attempt {os.environ.get('FASTFLOW_ATTEMPT', '1')}: unlucky, failing", file=sys.stderr)
    sys.exit(1)
print("lucky: success")
