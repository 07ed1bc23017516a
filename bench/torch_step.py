"""Seconds per training step of the same U-Net in PyTorch on the CPU, for the ratio to burn.

The network mirrors host/src/model.rs (conv-BN-ReLU blocks with biased 3x3 convolutions, 2x2
max pooling, 2x2 stride-2 transposed convolutions, skip concatenation, 1x1 head) and the step
mirrors host/benches/train_step.rs: forward, BCE + 0.3 x anisotropic TV of the probability map,
backward, Adam. The input is random: a convolutional network's step time does not depend on
the pixel values. PyTorch is a comparison here, not a dependency.

    python3 bench/torch_step.py [--batch 8] [--size 256] [--base 16] [--threads 1] [--steps 5]
"""

import argparse
import statistics
import time

import torch
from torch import nn


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class UNet(nn.Module):
    def __init__(self, depth: int, base: int) -> None:
        super().__init__()
        ch = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(block(1 if i == 0 else ch[i - 1], ch[i]) for i in range(depth))
        self.bottom = block(ch[depth - 1], ch[depth])
        levels = list(reversed(range(depth)))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(2 * ch[i], ch[i], 2, stride=2) for i in levels)
        self.blocks = nn.ModuleList(block(2 * ch[i], ch[i]) for i in levels)
        self.head = nn.Conv2d(base, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for b in self.down:
            x = b(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, b in zip(self.ups, self.blocks):
            x = b(torch.cat([up(x), skips.pop()], 1))
        return self.head(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    model = UNet(4, a.base)
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    bce = nn.BCEWithLogitsLoss()
    times, forwards = [], []
    for step in range(a.steps + 2):
        x = torch.randn(a.batch, 1, a.size, a.size)
        y = (torch.rand(a.batch, 1, a.size, a.size) < 0.15).float()
        started = time.perf_counter()
        logits = model(x)
        p = torch.sigmoid(logits)
        tv_rows = (p[..., 1:, :] - p[..., :-1, :]).abs().mean()
        tv = tv_rows + (p[..., :, 1:] - p[..., :, :-1]).abs().mean()
        loss = bce(logits, y) + 0.3 * tv
        loss.item()
        forward = time.perf_counter() - started
        optim.zero_grad()
        loss.backward()
        optim.step()
        total = time.perf_counter() - started
        if step >= 2:
            times.append(total)
            forwards.append(forward)
    t, f = statistics.median(times), statistics.median(forwards)
    print(
        f"pytorch {torch.__version__}, batch {a.batch}, {a.size}x{a.size}, base {a.base}, depth 4, "
        f"{params} parameters, {a.threads} threads: step median {t:.3f} s "
        f"(spread {max(times) - min(times):.3f} s over {a.steps}), forward+loss {f:.3f} s, "
        f"backward+Adam {t - f:.3f} s, {a.batch / t:.1f} slices/s"
    )


if __name__ == "__main__":
    main()
