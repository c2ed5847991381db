# A python3 workload for the LD_PRELOAD check (run with PYTHONMALLOC=malloc, so every
# object goes through malloc): threads building dicts, lists and strings, big bytes
# objects grown by realloc, json and hashing, and a fork from the threaded parent.
# Prints deterministic digests; the harness compares them with a run without preload.
import hashlib
import json
import os
import threading
import zlib


def work(seed, out):
    d = {}
    h = hashlib.sha256()
    for i in range(20000):
        k = f"key-{(i * seed) % 9973}-{i % 7}"
        d.setdefault(k, []).append(i * seed)
        if i % 1000 == 0:
            h.update(json.dumps(sorted(d.items())[:50]).encode())
    s = "".join(str(x) for x in range(20000))
    b = bytearray()
    for i in range(2000):
        b += bytes([i % 251]) * (i % 300)
    big = bytes(b) * 8
    h.update(zlib.compress(big))
    h.update(s.encode())
    out[seed] = (len(d), h.hexdigest())


out = {}
threads = [threading.Thread(target=work, args=(s, out)) for s in range(1, 5)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for seed in sorted(out):
    print(seed, *out[seed])

pid = os.fork()
if pid == 0:
    x = [str(i) * 10 for i in range(100000)]
    y = b"z" * (64 << 20)
    os._exit(0 if len(x) == 100000 and len(y) == 64 << 20 else 1)
_, status = os.waitpid(pid, 0)
print("fork child status", status)
blob = bytes(range(256)) * 100000
print("big", hashlib.md5(blob).hexdigest())
