"""Golden values of samkit-nn from PyTorch: a narrow CIFAR ResNet-18 with fixed weights and
inputs, its train-mode logits, per-sample and mean losses, every parameter gradient, the
running statistics after the step, eval-mode logits, and SSAM-F's per-sample squared gradients.

    python tools/golden_nn/make_golden.py            # writes tests/golden/nn/*.safetensors
    python tools/golden_nn/make_golden.py --verify F # loads a samkit-nn checkpoint F into
                                                     # PyTorch and checks its logits

Files (all safetensors, float32 unless noted):
- resnet_w4_state_dict.safetensors: `model.state_dict()` (PyTorch names, OIHW weights,
  num_batches_tracked as 0-d int64) before the step, written by safetensors.torch.save_file.
  The Rust test loads it through samkit_nn::checkpoint, so it also proves that a PyTorch
  checkpoint loads there.
- resnet_w4_golden.safetensors: `x` [4,3,16,16], `labels` (int64), `logits` (train mode),
  `losses` (per sample), `loss` (mean), `grad.<param>` for every parameter,
  `after.<bn>.running_mean|running_var|num_batches_tracked`, `eval_logits` (after the step's
  running-statistics update), `fisher.<param>` = Σ_i (∇ℓ_i)² with BN in eval mode (the
  running statistics before the step).
The loss is the label-smoothed cross-entropy of ALGORITHMS.md (s = 0.1: 1 − s on the true
class, s/(C − 1) elsewhere), which is not torch's `label_smoothing` (s/C everywhere).
"""
import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

WIDTH, CLASSES, BATCH, SIZE, SMOOTHING = 4, 10, 4, 16, 0.1
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "golden", "nn")


class Block(nn.Module):
    def __init__(s, i, o, st):
        super().__init__()
        s.conv1 = nn.Conv2d(i, o, 3, st, 1, bias=False)
        s.bn1 = nn.BatchNorm2d(o)
        s.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        s.bn2 = nn.BatchNorm2d(o)
        s.shortcut = nn.Sequential()
        if st != 1 or i != o:
            s.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, st, bias=False), nn.BatchNorm2d(o))

    def forward(s, x):
        y = F.relu(s.bn1(s.conv1(x)))
        y = s.bn2(s.conv2(y))
        return F.relu(y + s.shortcut(x))


class ResNet18(nn.Module):
    """The common CIFAR ResNet-18 (kuangliu layout) with a stem-width multiplier."""

    def __init__(s, nc=10, w=64):
        super().__init__()
        s.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        s.bn1 = nn.BatchNorm2d(w)
        cfg = [(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)]
        i = w
        layers = []
        for o, st in cfg:
            layers.append(nn.Sequential(Block(i, o, st), Block(o, o, 1)))
            i = o
        s.layer1, s.layer2, s.layer3, s.layer4 = layers
        s.linear = nn.Linear(8 * w, nc)

    def forward(s, x):
        x = F.relu(s.bn1(s.conv1(x)))
        x = s.layer4(s.layer3(s.layer2(s.layer1(x))))
        return s.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def smooth_ce(logits, labels, s=SMOOTHING):
    c = logits.shape[1]
    q = torch.full_like(logits, s / (c - 1))
    q.scatter_(1, labels[:, None], 1.0 - s)
    return -(q * F.log_softmax(logits, dim=1)).sum(1)


def make_model():
    torch.manual_seed(0)
    m = ResNet18(CLASSES, WIDTH)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
    return m


def generate():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    m = make_model()
    sd = {k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(OUT, "resnet_w4_state_dict.safetensors"))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g)
    labels = torch.tensor([3, 7, 0, 3], dtype=torch.int64)

    # SSAM-F's Fisher: per-sample gradients with BN in eval mode (running stats before the step).
    m.eval()
    params = {k: v.detach() for k, v in m.named_parameters()}
    buffers = {k: v.detach() for k, v in m.named_buffers()}

    def loss_one(p, xi, yi):
        out = torch.func.functional_call(m, (p, buffers), (xi[None],))
        return smooth_ce(out, yi[None])[0]

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, x, labels)
    fisher = {k: (v.double() ** 2).sum(0).float() for k, v in per_sample.items()}

    m.train()
    m.zero_grad()
    logits = m(x)
    losses = smooth_ce(logits, labels)
    loss = losses.mean()
    loss.backward()
    out = {
        "x": x,
        "labels": labels,
        "logits": logits.detach(),
        "losses": losses.detach(),
        "loss": loss.detach().reshape(()),
    }
    for k, p in m.named_parameters():
        out[f"grad.{k}"] = p.grad.detach().clone()
        out[f"fisher.{k}"] = fisher[k]
    for k, b in m.named_buffers():
        out[f"after.{k}"] = b.detach().clone()
    m.eval()
    with torch.no_grad():
        out["eval_logits"] = m(x)
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, os.path.join(OUT, "resnet_w4_golden.safetensors"))
    print(f"loss {loss.item():.6f}; {sum(p.numel() for p in m.parameters())} parameters; wrote {OUT}")


def verify(path):
    """Loads a samkit-nn checkpoint into PyTorch (strict) and compares the logits the Rust
    test wrote beside it (`<path>.logits.safetensors`: `x`, `eval_logits`)."""
    torch.set_num_threads(1)
    sd = load_file(path)
    m = ResNet18(CLASSES, WIDTH)
    m.load_state_dict(sd, strict=True)
    m.eval()
    ref = load_file(path + ".logits.safetensors")
    with torch.no_grad():
        got = m(ref["x"])
    err = ((got - ref["eval_logits"]).abs().max() / ref["eval_logits"].abs().max()).item()
    print(f"{path}: loaded with strict=True; max |Δlogits| / max |logits| = {err:.2e}")
    return err < 1e-5


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify", help="a checkpoint written by samkit-nn to load into PyTorch")
    a = ap.parse_args()
    if a.verify:
        sys.exit(0 if verify(a.verify) else 1)
    generate()
