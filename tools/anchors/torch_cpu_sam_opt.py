"""PyTorch side of benches/cpu_optimizers.rs: the optimizer side of one SAM step,
`pytorch_optimizer.SAM(..., torch.optim.SGD, rho=0.05, momentum 0.9, weight decay 5e-4)`
`first_step()` + `second_step()` on the parameters of the CIFAR ResNet-18 of
/work/shared/bench/torch_cpu_anchor.py (11,173,962 of them), with gradients already there, on
`--threads` threads (default 2): the code of that anchor's `sam_opt_only`.

Timed twice: as the anchor does (pytorch_optimizer's default `foreach=None`, which on the CPU is
a loop over the parameters, as torch.optim's SGD), and with `foreach=True` (torch's batched
`_foreach_*` kernels for the perturbation and the restore, and for SGD), so that the comparison is
against the faster of the two. Also `torch.optim.SGD.step` alone and `Tensor.copy_` bandwidth on
the arena's size. Prints one JSON line.
"""
import argparse, json, time
import torch
import pytorch_optimizer as po

from cifar_resnet import ResNet18

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=15)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def times(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def sam_side(foreach):
    m = ResNet18()
    for p in m.parameters():
        p.grad = torch.randn_like(p) * 1e-2
    kw = dict(rho=0.05, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    if foreach:
        kw["foreach"] = True
    sam = po.SAM(m.parameters(), torch.optim.SGD, **kw)

    def step():
        sam.first_step(); sam.second_step()
    return times(step, a.reps), sum(p.numel() for p in m.parameters())


(loop_med, loop_min), n = sam_side(False)
(fe_med, fe_min), _ = sam_side(True)
m = ResNet18()
for p in m.parameters():
    p.grad = torch.randn_like(p) * 1e-2
sgd = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
sgd_med, _ = times(sgd.step, a.reps)
src = torch.randn(n); dst = torch.empty_like(src)
copy_med, copy_min = times(lambda: dst.copy_(src), a.reps)
print(json.dumps(dict(
    threads=a.threads, params=n, torch=torch.__version__,
    sam_opt_median_s=loop_med, sam_opt_min_s=loop_min,
    sam_opt_foreach_median_s=fe_med, sam_opt_foreach_min_s=fe_min,
    sgd_step_median_s=sgd_med,
    copy_GBps_median=2 * 4 * n / copy_med / 1e9, copy_GBps_best=2 * 4 * n / copy_min / 1e9,
)))
