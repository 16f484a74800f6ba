"""CPU anchor for the global top-k of SSAM-F: torch.topk / kthvalue / sort over 11,173,962
scores (keep 50 %), with the thread count given (default 2). Prints one JSON object."""
import json
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
n = 11_173_962
g = torch.Generator().manual_seed(0)
u = torch.rand(n, generator=g)
scores = u * u * u * 1e-3
k = n // 2


def median_time(f, reps=7):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


res = {
    "threads": threads,
    "n": n,
    "k": k,
    "topk_unsorted_s": median_time(lambda: torch.topk(scores, k, sorted=False)),
    "kthvalue_s": median_time(lambda: torch.kthvalue(scores, n - k + 1)),
    "sort_s": median_time(lambda: torch.sort(scores)),
}
print(json.dumps(res))
