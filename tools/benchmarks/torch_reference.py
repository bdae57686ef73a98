"""The PyTorch side of the targets, measured on this machine: a PyTorch re-implementation of the
reference XECRegressor (DESIGN.md section 6), next to xecjax.

  pip install torch==2.13.0      # into the project venv (CPU build); only this bench needs it
  python tools/bench.py torch_reference [--quick] [--threads N]

The issues' targets are multiples of what the PyTorch reference achieved on the 2-core
development machine, and this project's sessions have run on different CPUs behind that name.
This bench measures the same architecture in PyTorch where xecjax is measured now: training
(forward + backward + AdamW, batch 32) and inference (batch 256) in PyTorch, and the
onnxruntime batch-1 latency of its ONNX export (the legacy TorchScript exporter, opset 18,
dynamic batch) interleaved block by block with xecjax's export of the same architecture, so
both see the same noisy phases of the machine. The model is written the idiomatic PyTorch way
(NCHW convolutions, nn.TransformerEncoderLayer, F.interpolate); its parameter count is checked
against the reference's 27,314,950. It is not the reference code itself (not available here),
so its numbers are an estimate of the reference on this machine. Face index maps come from
xecjax.geometry; weights are random (timing does not depend on them).
"""

from __future__ import annotations

import os

import numpy as np

from xecjax import geometry

from .onnx import REFERENCE_CONFIG, export_graph, timed

REFERENCE_PARAMS = 27_314_950


def add_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="default: CPUs we may use")


def build_torch_model():
    """The reference XECRegressor (finegrid) in plain PyTorch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LayerNorm2d(nn.Module):  # ConvNeXt's channels-first LayerNorm
        def __init__(self, d: int, eps: float = 1e-6):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
            self.eps = eps

        def forward(self, x):
            u = x.mean(1, keepdim=True)
            v = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(v + self.eps)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class GRN(nn.Module):
        def __init__(self, d: int, dims: tuple[int, ...]):
            super().__init__()
            self.gamma, self.beta = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
            self.dims = dims

        def forward(self, x):
            gx = torch.norm(x, p=2, dim=self.dims, keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
            return self.gamma * (x * nx) + self.beta + x

    def mlp(d: int, dims, eps: float):  # LN -> Dense 4d -> GELU (erf) -> GRN -> Dense d
        return nn.Sequential(
            nn.LayerNorm(d, eps=eps),
            nn.Linear(d, 4 * d),
            nn.GELU(),
            GRN(4 * d, dims),
            nn.Linear(4 * d, d),
        )

    class Block(nn.Module):  # ConvNeXt V2
        def __init__(self, d: int):
            super().__init__()
            self.dw = nn.Conv2d(d, d, 7, padding=3, groups=d)
            self.mlp = mlp(d, (1, 2), 1e-6)  # channels last, GRN over H, W

        def forward(self, x):
            return x + self.mlp(self.dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(2, 32, 4, 1, 1),
                LayerNorm2d(32),
                *[Block(32) for _ in range(2)],
                LayerNorm2d(32),
                nn.Conv2d(32, 64, 2, 2),
                *[Block(64) for _ in range(3)],
            )

        def forward(self, x):
            y = F.interpolate(self.net(x), size=(4, 4), mode="bilinear", align_corners=False)
            return y.flatten(1)

    nbr = torch.as_tensor(geometry.HEX_NEIGHBORS)
    mask = torch.as_tensor(geometry.HEX_NEIGHBOR_MASK)

    class HexBlock(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.gate, self.mlp = nn.Linear(2 * d, 1), mlp(d, (1,), 1e-5)  # GRN over nodes

        def forward(self, x):
            xj = x[:, nbr]  # [B, N, K, C]
            w = torch.sigmoid(self.gate(torch.cat([x[:, :, None].expand_as(xj), xj], -1)))
            return x + self.mlp(x + (w[..., 0, None] * mask[..., None] * xj).sum(2))

    class Hex(nn.Module):
        def __init__(self, d: int = 96):
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(2, d), nn.LayerNorm(d), nn.GELU())
            self.blocks = nn.Sequential(*[HexBlock(d) for _ in range(4)])
            self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1024))

        def forward(self, x):
            return self.out(self.blocks(self.embed(x)).mean(1))

    names = ("INNER_MAP", "US_MAP", "DS_MAP", "TOP_IDS", "BOTTOM_IDS", "OUTER_FINE_MAP")
    maps = {k: torch.as_tensor(getattr(geometry, k)) for k in names}
    scale = torch.as_tensor(geometry.OUTER_FINE_SCALE)
    scale = torch.stack([scale, torch.ones_like(scale)], -1)

    class XECRegressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.hex = Backbone(), Hex()
            self.pos_embed = nn.Parameter(torch.zeros(1, 6, 1024))
            layer = nn.TransformerEncoderLayer(1024, 8, 4096, 0.1, "gelu", batch_first=True)
            self.fusion = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Sequential(nn.Linear(6144, 256), nn.LayerNorm(256), nn.GELU(),
                                      nn.Dropout(0.2), nn.Linear(256, 2))  # fmt: skip

        def forward(self, x):
            face = lambda m: x[:, maps[m]].permute(0, 3, 1, 2)  # noqa: E731
            outer = F.avg_pool2d((x[:, maps["OUTER_FINE_MAP"]] * scale).permute(0, 3, 1, 2), 3)
            cnn = [face("INNER_MAP"), face("US_MAP"), face("DS_MAP"), outer]
            tokens = [self.backbone(f) for f in cnn]
            tokens += [self.hex(x[:, maps["TOP_IDS"]]), self.hex(x[:, maps["BOTTOM_IDS"]])]
            t = self.fusion(torch.stack(tokens, 1) + self.pos_embed)
            return self.head(t.flatten(1))

    return XECRegressor()


def _median_s(fn, reps: int) -> float:
    return float(np.median(timed(lambda _: fn(), None, reps)))


def run(args) -> dict:
    import io

    import onnxruntime as ort
    import torch

    from xecjax.export import DEFAULT_OPSET

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_torch_model()
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != REFERENCE_PARAMS:
        raise RuntimeError(f"PyTorch model has {n_params} parameters, expected {REFERENCE_PARAMS}")
    gen = torch.Generator().manual_seed(0)
    x256, x32 = torch.randn(256, 4760, 2, generator=gen), torch.randn(32, 4760, 2, generator=gen)
    y32 = torch.randn(32, 2, generator=gen)
    reps = 1 if args.quick else 3
    model.eval()
    with torch.no_grad():
        infer_s = _median_s(lambda: model(x256), reps)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.smooth_l1_loss(model(x32), y32).backward()
        opt.step()

    step()
    train_s = _median_s(step, 2 if args.quick else 8)

    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (x32[:2],), buf, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
                      opset_version=DEFAULT_OPSET, dynamo=False)  # fmt: skip
    ours = export_graph(REFERENCE_CONFIG)[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
                for k, p in (("torch", buf.getvalue()), ("xecjax", ours))}  # fmt: skip
    x1 = x256[:1].numpy()
    blocks = {k: [] for k in sessions}
    for _ in range(3 if args.quick else 8):  # alternate: both see the same phases
        for k, s in sessions.items():
            blocks[k].append(1e3 * _median_s(lambda s=s: s.run(["output"], {"input": x1}), 25))
    return {
        "events_per_s": round(32 / train_s, 1),
        "torch_version": torch.__version__,
        "threads": threads,
        "params": n_params,
        "torch_train_events_per_s": round(32 / train_s, 1),
        "torch_infer_events_per_s": round(256 / infer_s, 1),
        "ort_latency_ms_b1_torch_export": round(float(np.median(blocks["torch"])), 2),
        "ort_latency_ms_b1_xecjax_export": round(float(np.median(blocks["xecjax"])), 2),
        "ort_latency_ms_b1_blocks": {k: [round(v, 2) for v in b] for k, b in blocks.items()},
    }
