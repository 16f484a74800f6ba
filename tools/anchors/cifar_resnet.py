"""The CIFAR ResNet-18 both PyTorch anchors time (3x3 stem, no max-pool, [2,2,2,2] basic blocks
with 1x1 conv + BN shortcuts): the model of shared/bench/torch_cpu_anchor.py and of samkit-nn."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(s, i, o, st):
        super().__init__()
        s.conv1 = nn.Conv2d(i, o, 3, st, 1, bias=False); s.bn1 = nn.BatchNorm2d(o)
        s.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False); s.bn2 = nn.BatchNorm2d(o)
        s.shortcut = nn.Sequential()
        if st != 1 or i != o:
            s.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, st, bias=False), nn.BatchNorm2d(o))

    def forward(s, x):
        y = F.relu(s.bn1(s.conv1(x))); y = s.bn2(s.conv2(y)); return F.relu(y + s.shortcut(x))


class ResNet18(nn.Module):
    def __init__(s, nc=10):
        super().__init__()
        s.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); s.bn1 = nn.BatchNorm2d(64)
        i = 64; layers = []
        for o, st in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers.append(nn.Sequential(Block(i, o, st), Block(o, o, 1))); i = o
        s.layer1, s.layer2, s.layer3, s.layer4 = layers
        s.linear = nn.Linear(512, nc)

    def forward(s, x):
        x = F.relu(s.bn1(s.conv1(x)))
        x = s.layer4(s.layer3(s.layer2(s.layer1(x))))
        return s.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
