#!/usr/bin/env python3
"""Golden trajectories of the SAM family from the PyTorch reference implementations.

Builds a small float32 MLP (dims [6, 12, 8, 3], tanh hidden layers, parameters named
fc0.weight, fc0.bias, ..., fc2.bias: exactly `samkit::Layout::mlp(&[6, 12, 8, 3])`), trains it
for 20 steps on fixed data with each reference optimizer, and writes one JSON file per case into
`tests/golden/`. `tests/golden_pytorch.rs` replays every case with `samkit::Optimizer`.

Each file holds the case name, the reference it came from, the hyperparameters (torch names),
the data (X, y, the four mini-batches and the batch used at each step), the initial flat
parameters, the learning rate (and GSAM's rho) used at each step, the clean loss at each step,
the gradient at the initial weights on the first batch (to check the MLP alone), and the flat
parameters after every step.

Floats are written as the shortest decimal that names the float32 value; the script checks
that serde_json (without `float_roundtrip`) reads each one back to exactly that float32.

Run from the repository root (see tools/golden/README.md):
    /work/.venv-torch/bin/python tools/golden/make_golden.py
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_optimizer import GSAM, SAM, FriendlySAM, LookSAM, ProportionScheduler

DIMS = [6, 12, 8, 3]
N_SAMPLES = 32
BATCH = 8
STEPS = 20
MODEL_SEED = 0
DATA_SEED = 1234

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Float formatting that survives serde_json exactly.


def _serde_parse(s: str) -> float:
    """What serde_json 1.x (without `float_roundtrip`) makes of a JSON number."""
    sign, digits, exp = Decimal(s).as_tuple()
    significand = int("".join(map(str, digits)))
    assert significand < 2**64
    f = float(significand)  # `significand as f64`
    if exp >= 0:
        f *= float(f"1e{exp}")
    else:
        assert -exp <= 308
        f /= float(f"1e{-exp}")
    return -f if sign else f


def fmt_f32(x) -> str:
    v = np.float32(x)
    if not np.isfinite(v):
        raise ValueError(f"non-finite value {v}")
    s = str(v)  # numpy: the shortest decimal that round-trips as float32
    back = np.float32(_serde_parse(s))
    if back != v or np.signbit(back) != np.signbit(v):
        raise AssertionError(f"{s} does not read back as float32 {v!r}")
    return s


def bits_sum(a: np.ndarray) -> int:
    """Sum of the float32 bit patterns: the Rust test checks that it read the floats exactly."""
    return int(np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64).sum())


class Raw(str):
    """A pre-formatted JSON fragment."""


def to_json(obj, indent: int = 0) -> str:
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and isinstance(obj[0], (list, Raw)):
        items = [f"{inner}{to_json(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def f32_array(a) -> Raw:
    a = np.asarray(a, dtype=np.float32).ravel()
    return Raw("[" + ",".join(fmt_f32(v) for v in a) + "]")


# ----------------------------------------------------------------------------------------------
# Model and data.


class MLP(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.n = len(dims) - 1
        for i in range(self.n):
            setattr(self, f"fc{i}", nn.Linear(dims[i], dims[i + 1]))

    def forward(self, x):
        for i in range(self.n):
            x = getattr(self, f"fc{i}")(x)
            if i + 1 < self.n:
                x = torch.tanh(x)
        return x


def initial_state():
    torch.manual_seed(MODEL_SEED)
    return {k: v.clone() for k, v in MLP(DIMS).state_dict().items()}


def make_data():
    g = torch.Generator().manual_seed(DATA_SEED)
    x = torch.randn(N_SAMPLES, DIMS[0], generator=g, dtype=torch.float32)
    y = torch.randint(0, DIMS[-1], (N_SAMPLES,), generator=g)
    perm = torch.randperm(N_SAMPLES, generator=g)
    batches = [perm[i * BATCH:(i + 1) * BATCH].tolist() for i in range(N_SAMPLES // BATCH)]
    order = [t % len(batches) for t in range(STEPS)]
    return x, y, batches, order


def flat_params(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def flat_grads(model) -> np.ndarray:
    return torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


# ----------------------------------------------------------------------------------------------
# ASAM (Kwon et al., ICML 2021), after the official code (SamsungLabs/ASAM, `asam.py`), with
# one change the brief asks for: the weights are restored by copy, not by subtracting `e`.


class ASAM:
    def __init__(self, model, base, rho=0.5, eta=0.01):
        self.model, self.base, self.rho, self.eta = model, base, rho, eta
        self.old = {}

    @torch.no_grad()
    def ascent_step(self):
        ts, norms = {}, []
        for n, p in self.model.named_parameters():
            if "weight" in n:
                t = p.abs().add_(self.eta)
                p.grad.mul_(t)  # T ⊙ g
                ts[n] = t
            norms.append(torch.norm(p.grad, p=2))
        norm = torch.norm(torch.stack(norms), p=2) + 1.0e-16
        for n, p in self.model.named_parameters():
            if n in ts:
                p.grad.mul_(ts[n])  # T² ⊙ g
            e = p.grad.mul(self.rho / norm)
            self.old[n] = p.clone()
            p.add_(e)
        self.base.zero_grad()

    @torch.no_grad()
    def descent_step(self):
        for n, p in self.model.named_parameters():
            p.copy_(self.old.pop(n))
        self.base.step()
        self.base.zero_grad()


# ----------------------------------------------------------------------------------------------
# Cases. `base` and `rule` use torch / pytorch_optimizer argument names.

SGD_M = {"type": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
         "weight_decay": 5e-4}


def sgd(lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False):
    return {"type": "sgd", "lr": lr, "momentum": momentum, "dampening": dampening,
            "nesterov": nesterov, "weight_decay": weight_decay, **_maximize(maximize)}


def _maximize(on):
    # Recorded only when set, so that the files of the other cases stay as they were.
    return {"maximize": True} if on else {}


def adam(kind, lr, weight_decay):
    return {"type": kind, "lr": lr, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": weight_decay}


def rmsprop(lr, alpha=0.99, momentum=0.0, centered=False, weight_decay=0.0, maximize=False):
    return {"type": "rmsprop", "lr": lr, "alpha": alpha, "eps": 1e-8, "momentum": momentum,
            "centered": centered, "weight_decay": weight_decay, **_maximize(maximize)}


CASES = [
    # name, reference, base, rule
    ("sgd_plain", "torch.optim.SGD", sgd(0.1), {"type": "base"}),
    ("sgd_momentum_wd_dampening", "torch.optim.SGD",
     sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=5e-4), {"type": "base"}),
    ("sgd_nesterov", "torch.optim.SGD",
     sgd(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), {"type": "base"}),
    ("adam_wd", "torch.optim.Adam", adam("adam", 0.01, 1e-2), {"type": "base"}),
    ("adamw_wd", "torch.optim.AdamW", adam("adamw", 0.01, 0.1), {"type": "base"}),
    ("rmsprop_plain", "torch.optim.RMSprop", rmsprop(0.002), {"type": "base"}),
    ("rmsprop_momentum_centered_wd", "torch.optim.RMSprop",
     rmsprop(0.001, momentum=0.9, centered=True, weight_decay=1e-3), {"type": "base"}),
    # maximize: the gradient is negated before the weight decay, the momentum and the averages.
    ("sgd_maximize", "torch.optim.SGD(maximize=True)",
     sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=5e-4, maximize=True), {"type": "base"}),
    ("sgd_nesterov_maximize", "torch.optim.SGD(maximize=True)",
     sgd(0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, maximize=True), {"type": "base"}),
    ("rmsprop_maximize", "torch.optim.RMSprop(maximize=True)",
     rmsprop(0.001, momentum=0.9, centered=True, weight_decay=1e-3, maximize=True),
     {"type": "base"}),
    ("sam_sgd", "pytorch_optimizer.SAM + torch.optim.SGD", dict(SGD_M),
     {"type": "sam", "rho": 0.05, "adaptive": False}),
    ("sam_adaptive_sgd", "pytorch_optimizer.SAM(adaptive=True) + torch.optim.SGD", dict(SGD_M),
     {"type": "sam", "rho": 0.5, "adaptive": True}),
    ("sam_adam", "pytorch_optimizer.SAM + torch.optim.Adam", adam("adam", 0.005, 0.0),
     {"type": "sam", "rho": 0.05, "adaptive": False}),
    ("friendlysam_sgd", "pytorch_optimizer.FriendlySAM + torch.optim.SGD", dict(SGD_M),
     {"type": "friendlysam", "rho": 0.05, "sigma": 1.0, "lmbda": 0.9}),
    ("gsam_constant_lr", "pytorch_optimizer.GSAM + ProportionScheduler(LambdaLR(1.0))",
     dict(SGD_M),
     {"type": "gsam", "rho_max": 0.05, "rho_min": 0.05, "alpha": 0.4, "max_lr": 0.05,
      "min_lr": 0.05, "lr_schedule": "constant"}),
    ("gsam_steplr", "pytorch_optimizer.GSAM + ProportionScheduler(StepLR(10, 0.1))",
     dict(SGD_M),
     {"type": "gsam", "rho_max": 0.1, "rho_min": 0.02, "alpha": 0.4, "max_lr": 0.05,
      "min_lr": 0.0, "lr_schedule": "steplr", "step_size": 10, "gamma": 0.1}),
    ("looksam_sgd", "pytorch_optimizer.LookSAM + torch.optim.SGD", dict(SGD_M),
     {"type": "looksam", "rho": 0.1, "k": 5, "alpha": 0.7}),
    ("asam_sgd", "ASAM (official algorithm, re-implemented here) + torch.optim.SGD", dict(SGD_M),
     {"type": "asam", "rho": 0.5, "eta": 0.01}),
]


def base_class_and_kwargs(base):
    kind = base["type"]
    kw = {k: v for k, v in base.items() if k != "type"}
    if kind in ("adam", "adamw"):
        kw["betas"] = tuple(kw["betas"])
        return (torch.optim.Adam if kind == "adam" else torch.optim.AdamW), kw
    return {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}[kind], kw


def run_case(name, reference, base, rule, init, data):
    x, y, batches, order = data
    model = MLP(DIMS)
    model.load_state_dict(init)
    cls, kw = base_class_and_kwargs(base)
    kind = rule["type"]

    def loss_fn(xb, yb):
        return F.cross_entropy(model(xb), yb)

    lrs, rhos, losses, traj = [], [], [], []
    sched = None
    if kind == "base":
        opt = cls(model.parameters(), **kw)
    elif kind == "sam":
        opt = SAM(model.parameters(), cls, rho=rule["rho"], adaptive=rule["adaptive"], **kw)
    elif kind == "friendlysam":
        opt = FriendlySAM(model.parameters(), cls, rho=rule["rho"], sigma=rule["sigma"],
                          lmbda=rule["lmbda"], **kw)
    elif kind == "looksam":
        opt = LookSAM(model.parameters(), cls, rho=rule["rho"], k=rule["k"],
                      alpha=rule["alpha"], **kw)
    elif kind == "asam":
        base_opt = cls(model.parameters(), **kw)
        opt = ASAM(model, base_opt, rho=rule["rho"], eta=rule["eta"])
    elif kind == "gsam":
        base_opt = cls(model.parameters(), **kw)
        if rule["lr_schedule"] == "steplr":
            sched = torch.optim.lr_scheduler.StepLR(base_opt, step_size=rule["step_size"],
                                                    gamma=rule["gamma"])
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(base_opt, lambda _: 1.0)
        rho_sched = ProportionScheduler(sched, max_lr=rule["max_lr"], min_lr=rule["min_lr"],
                                        max_value=rule["rho_max"], min_value=rule["rho_min"])
        opt = GSAM(model.parameters(), base_opt, model, rho_sched, alpha=rule["alpha"])
    else:
        raise ValueError(kind)

    param_groups = opt.base.param_groups if kind == "asam" else opt.param_groups
    grad0 = None
    for t in range(STEPS):
        idx = torch.tensor(batches[order[t]])
        xb, yb = x[idx], y[idx]
        lrs.append(param_groups[0]["lr"])
        if kind == "base":
            opt.zero_grad()
            loss = loss_fn(xb, yb)
            loss.backward()
            if t == 0:
                grad0 = flat_grads(model)
            opt.step()
        elif kind in ("sam", "friendlysam", "looksam"):

            def closure():
                opt.zero_grad()
                loss = loss_fn(xb, yb)
                loss.backward()
                return loss

            loss = closure()
            if t == 0:
                grad0 = flat_grads(model)
            opt.step(closure)
        elif kind == "asam":
            opt.base.zero_grad()
            loss = loss_fn(xb, yb)
            loss.backward()
            if t == 0:
                grad0 = flat_grads(model)
            opt.ascent_step()
            loss_fn(xb, yb).backward()
            opt.descent_step()
        elif kind == "gsam":
            rhos.append(opt.rho_t)
            opt.set_closure(F.cross_entropy, xb, yb)
            # GSAM does not expose its clean gradient; the MLP check uses the base cases.
            _, loss = opt.step()
            sched.step()
            opt.update_rho_t()
        losses.append(float(loss.detach()))
        traj.append(flat_params(model))
        if not np.all(np.isfinite(traj[-1])):
            raise RuntimeError(f"{name}: non-finite parameters at step {t}")

    return lrs, rhos, losses, grad0, traj


# Cases whose float32 trajectory is ill-conditioned: the same reference is also run in float64,
# and the file gets `trajectory_f64` (rounded to float32) so that the Rust test can measure how
# far the reference's own float32 run is from the exact trajectory. LookSAM: pytorch_optimizer
# normalises the per-tensor `g_v = g_s − (⟨g, g_s⟩/‖g‖²)·g` to `α‖g‖`, and for the 3-element
# fc2.bias `‖g_v‖/‖g_s‖` is about 9e-3, so float32 rounding in `g_v` is amplified ~100× at
# every step (see tools/golden/README.md).
F64_COMPANION = {"looksam_sgd"}


def run_case_f64(name, reference, base, rule, init, data):
    x, y, batches, order = data
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        init64 = {k: v.to(torch.float64) for k, v in init.items()}
        return run_case(name, reference, base, rule, init64,
                        (x.to(torch.float64), y, batches, order))[4]
    finally:
        torch.set_default_dtype(previous)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    ap.add_argument("--only", nargs="*", help="case names to regenerate (default: all)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    init = initial_state()
    data = make_data()
    x, y, batches, order = data
    model = MLP(DIMS)
    model.load_state_dict(init)
    names = [n for n, _ in model.named_parameters()]
    shapes = [list(p.shape) for p in model.parameters()]
    w0 = flat_params(model)
    assert names == [f"fc{i}.{k}" for i in range(3) for k in ("weight", "bias")]
    assert w0.size == sum(a * b for a, b in zip(DIMS[1:], DIMS[:-1])) + sum(DIMS[1:])

    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, reference, base, rule in CASES:
        if args.only and name not in args.only:
            continue
        lrs, rhos, losses, grad0, traj = run_case(name, reference, base, rule, init, data)
        doc = {
            "case": name,
            "reference": reference,
            "versions": {"torch": torch.__version__.split("+")[0],
                         "pytorch_optimizer": metadata.version("pytorch-optimizer"),
                         "numpy": np.__version__},
            "dims": DIMS,
            "param_names": names,
            "param_shapes": shapes,
            "steps": STEPS,
            "base": base,
            "rule": rule,
            "lr_per_step": lrs,
            **({"rho_per_step": rhos} if rhos else {}),
            "x": f32_array(x.numpy()),
            "y": y.tolist(),
            "x_bits_sum": bits_sum(x.numpy()),
            "batches": batches,
            "batch_order": order,
            "init": f32_array(w0),
            "init_bits_sum": bits_sum(w0),
            "loss_per_step": f32_array(losses),
            **({"grad0": f32_array(grad0)} if grad0 is not None else {}),
            "trajectory": [f32_array(w) for w in traj],
        }
        if name in F64_COMPANION:
            traj64 = run_case_f64(name, reference, base, rule, init, data)
            doc["trajectory_f64"] = [f32_array(w) for w in traj64]
        text = to_json(doc) + "\n"
        path = args.out / f"{name}.json"
        path.write_text(text)
        total += len(text)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{len(text)} bytes, final loss {losses[-1]:.6f}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
