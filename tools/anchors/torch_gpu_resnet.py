"""PyTorch anchor for samkit-nn's GPU train step (crates/samkit-nn/examples/cuda_step.rs).

The ResNet-18 part of ../shared/bench/torch_gpu_anchor.py (same model, same SGD and SAM steps,
same CUDA-event timing: median of 20 reps after 5 warm-up reps), at the settings samkit-nn runs
with: fp32, TF32 off, cudnn.benchmark on, batch 128 of 32x32 images, measured in both memory
formats (NCHW contiguous, which samkit-nn uses, and channels_last, which the shared anchor uses).

    python3 torch_gpu_resnet.py [--samkit cuda_step.json] [--out out.json] [--batch 128]

With --samkit, adds the ratios samkit / PyTorch of the median step times (SGD and SAM, NCHW) and
whether they are within the 1.25x target. Prints one JSON object.
"""
import argparse
import json

import torch
import torch.nn.functional as F

from cifar_resnet import ResNet18

p = argparse.ArgumentParser()
p.add_argument("--samkit", help="JSON of crates/samkit-nn/examples/cuda_step.rs")
p.add_argument("--out")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--reps", type=int, default=20)
a = p.parse_args()

dev = "cuda"
torch.backends.cudnn.benchmark = True
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def time_ms(fn, reps, warm=5):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "cudnn": torch.backends.cudnn.version(),
    "batch": a.batch,
    "precision": "fp32",
    "tf32": False,
}
rho = 0.05
x = torch.randn(a.batch, 3, 32, 32, device=dev)
y = torch.randint(0, 10, (a.batch,), device=dev)
for fmt, mf in [("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)]:
    torch.manual_seed(0)
    m = ResNet18().to(dev).to(memory_format=mf)
    xx = x.to(memory_format=mf)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ps = list(m.parameters())

    def sgd_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xx), y).backward()
        opt.step()

    def sam_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xx), y).backward()
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in ps])))
            e = torch._foreach_mul([p.grad for p in ps], rho / (norm + 1e-12))
            torch._foreach_add_(ps, e)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(xx), y).backward()
        with torch.no_grad():
            torch._foreach_sub_(ps, e)
        opt.step()

    res[f"resnet18_b{a.batch}_fp32_{fmt}_sgd_ms"] = time_ms(sgd_step, a.reps)
    res[f"resnet18_b{a.batch}_fp32_{fmt}_sam_ms"] = time_ms(sam_step, a.reps)

if a.samkit:
    sk = json.load(open(a.samkit))
    opts = sk.get("optimizers", {})
    cmp = {}
    for rule in ["sgd", "sam"]:
        if rule in opts:
            s = opts[rule]["median_step_ms"]
            t = res[f"resnet18_b{a.batch}_fp32_nchw_{rule}_ms"]
            cmp[rule] = {"samkit_ms": s, "torch_nchw_ms": t, "ratio": s / t,
                         "within_1_25x": s <= 1.25 * t}
    res["samkit_vs_torch"] = cmp

out = json.dumps(res, indent=2)
print(out)
if a.out:
    open(a.out, "w").write(out)
