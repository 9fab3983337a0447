"""delayed_success: takes about 20 seconds, printing progress every second, then succeeds.
Good for watching live logs. DELAY_SECONDS shortens it."""
import os
import time

total = int(os.environ.get("DELAY_SECONDS", "20"))
for i in range(1, total + 1):
    print(f"progress {i}/{total}", flush=True)
    time.sleep(1)
print("done")
