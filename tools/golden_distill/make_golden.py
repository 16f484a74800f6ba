"""Golden values of MESA/SAF's distillation loss from PyTorch (ALGORITHMS.md, "MESA and SAF").

L = CE_ls(z, y) + lam * tau^2 * mean_i KL(softmax(t_i/tau) || softmax(z_i/tau)), both through
log_softmax (F.kl_div with log_target, batchmean), and dL/dz by autograd, in float64.
Writes tests/golden/distill/kd.json, read by crates/samkit-nn/tests/distill_golden.rs.
Run: python tools/golden_distill/make_golden.py (torch >= 2.0).
"""
import json
import pathlib

import torch
import torch.nn.functional as F

torch.manual_seed(0)
out = []
for (n, k, lam, tau, s) in [(4, 10, 0.8, 5.0, 0.0), (3, 7, 0.3, 5.0, 0.1), (5, 3, 1.5, 1.0, 0.2)]:
    z = (torch.randn(n, k, dtype=torch.float64) * 3).float().double().requires_grad_(True)
    t = (torch.randn(n, k, dtype=torch.float64) * 3).float().double()
    y = torch.randint(0, k, (n,))
    q = torch.full((n, k), s / (k - 1), dtype=torch.float64)
    q[torch.arange(n), y] = 1 - s
    ce = -(q * F.log_softmax(z, dim=1)).sum(1)
    kl = F.kl_div(F.log_softmax(z / tau, dim=1), F.log_softmax(t / tau, dim=1),
                  reduction="none", log_target=True).sum(1)
    per = ce + lam * tau * tau * kl
    per.mean().backward()
    out.append({
        "n": n, "k": k, "lambda": lam, "tau": tau, "smoothing": s,
        "z": z.detach().flatten().tolist(), "t": t.flatten().tolist(), "y": y.tolist(),
        "per_sample": per.detach().tolist(), "kd": (tau * tau * kl).detach().tolist(),
        "grad": z.grad.flatten().tolist(),
        "torch": torch.__version__,
    })
p = pathlib.Path(__file__).resolve().parents[2] / "tests/golden/distill/kd.json"
p.write_text(json.dumps(out, indent=1) + "\n")
print(p)
