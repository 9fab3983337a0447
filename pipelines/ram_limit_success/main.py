"""ram_limit_success: holds 100 MB under a 256 MB mem_hard_limit, and succeeds."""
import time

block = bytearray(100 * 1024 * 1024)
for i in range(0, len(block), 4096):  # touch every page so the memory is really used
    block[i] = 1
print("holding 100 MB", flush=True)
time.sleep(2)
print("done: 100 MB fit under 256 MB")
