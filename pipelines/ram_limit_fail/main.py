"""ram_limit_fail: holds 100 MB under a 50 MB mem_hard_limit. In Fast-Flow it is killed by
the kernel and ends failed / oom_killed. (Plain `python main.py` has no limit and succeeds.)"""
import time

block = bytearray(100 * 1024 * 1024)
for i in range(0, len(block), 4096):  # touch every page so the memory is really used
    block[i] = 1
print("holding 100 MB", flush=True)
time.sleep(2)
print("still alive: no memory limit was enforced")
