"""PyTorch side of benches/nn_cpu.rs: the CIFAR ResNet-18 of /work/shared/bench/torch_cpu_anchor.py
(width 64, 10 classes), batch 32 of 32×32 images, SGD (momentum 0.9, weight decay 5e-4) train step
(zero_grad, forward, cross-entropy, backward, step), on `--threads` threads (default 2).

Prints one JSON line: median (and minimum) step time, its CPU time over all threads,
forward-only time, and an SSAM-F Fisher over 128 samples
(per-sample gradients with torch.func.vmap, BN in eval mode) for comparison with
`ResNet18::per_sample_grad_sq`.
"""
import argparse, json, time
import torch, torch.nn as nn, torch.nn.functional as F

from cifar_resnet import ResNet18

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--fisher", type=int, default=0, help="samples of the per-sample Fisher (0: skip)")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def cpu_time():
    """CPU time of all threads of this process (Linux schedstat), in seconds."""
    import os
    ns = 0
    for t in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{t}/schedstat") as f:
                ns += int(f.read().split()[0])
        except OSError:
            pass
    return ns * 1e-9


CPU = {}


def median(f, reps, key=None):
    f()
    ts, cs = [], []
    for _ in range(reps):
        c = cpu_time(); t = time.perf_counter(); f(); ts.append(time.perf_counter() - t); cs.append(cpu_time() - c)
    ts.sort(); cs.sort()
    if key:
        CPU[key] = cs[len(cs) // 2]
        CPU[key.replace("_cpu_s", "_min_s")] = ts[0]
    return ts[len(ts) // 2]


m = ResNet18()
x = torch.randn(a.batch, 3, 32, 32); y = torch.randint(0, 10, (a.batch,))
sgd = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def step():
    sgd.zero_grad(); F.cross_entropy(m(x), y).backward(); sgd.step()


def fwd():
    with torch.no_grad():
        m(x)


res = dict(threads=torch.get_num_threads(), batch=a.batch, torch=torch.__version__,
           sgd_train_step_s=median(step, a.reps, "sgd_train_step_cpu_s"), forward_s=median(fwd, a.reps))
res.update(CPU)
if a.fisher:
    m.eval()
    params = {k: v.detach() for k, v in m.named_parameters()}
    bufs = {k: v.detach() for k, v in m.named_buffers()}
    xf = torch.randn(a.fisher, 3, 32, 32); yf = torch.randint(0, 10, (a.fisher,))

    def loss1(p, xi, yi):
        return F.cross_entropy(torch.func.functional_call(m, (p, bufs), (xi[None],)), yi[None])

    g1 = torch.func.vmap(torch.func.grad(loss1), in_dims=(None, 0, 0))

    def fisher():
        out = {k: torch.zeros_like(v) for k, v in params.items()}
        for s in range(0, a.fisher, 32):
            for k, v in g1(params, xf[s:s + 32], yf[s:s + 32]).items():
                out[k] += (v * v).sum(0)

    res["fisher_samples"] = a.fisher
    res["fisher_s"] = median(fisher, max(1, a.reps // 2))
print(json.dumps(res))
