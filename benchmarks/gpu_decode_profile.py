"""Launch the decode kernel on a 67M-weight bf16 tensor a few times, for a profiler to read.

Run under Nsight Compute to see what limits the kernel (stall reasons, occupancy, memory):

    ncu --clock-control none -k regex:decode_lanes --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python benchmarks/gpu_decode_profile.py --steps 512 --group 4

With --packed DIR it launches instead the plan the library builds for every coded tensor of a packed
checkpoint (kernel `_decode_many_kernel`: `-k regex:decode_many`), e.g. the packed MiniLM demo model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from unweight.codec.tensor import encode_float
from unweight.kernels import decode as kd
from unweight.packed import PackedTensor
from unweight.reader import PackedReader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=512)
    p.add_argument("--group", type=int, default=0, help="runs of neighbours a lane (0: what compress picks)")
    p.add_argument("--table", type=int, default=kd.DEFAULT_CONFIG.table)
    p.add_argument("--launches", type=int, default=4)
    p.add_argument("--packed", type=Path, default=None, help="a packed checkpoint: launch its DecodePlan instead")
    args = p.parse_args()
    if args.packed is not None:
        launch_packed(args.packed, args.launches)
        return
    weights = (torch.randn(8192, 8192, device="cuda") * 0.02).to(torch.bfloat16)
    data = weights.view(torch.uint8).reshape(-1).cpu().numpy()
    enc = encode_float("BF16", weights.numel(), lambda a, b: data[a:b], steps=args.steps, group=args.group)
    packed = PackedTensor("w", "BF16", tuple(weights.shape), "lanes",
                          {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.streams.items()},
                          args.steps, enc.code_lengths, group=enc.group).to("cuda")
    out = torch.empty_like(weights)
    config = kd.DecodeConfig(table=args.table)
    item = kd.DecodeItem.from_packed(packed, out.view(-1))
    for _ in range(args.launches):
        kd.launch_decode(item, config)
    torch.cuda.synchronize()
    ok = torch.equal(out.view(torch.int16), weights.view(torch.int16))
    print(f"steps={args.steps} group={enc.group} table={args.table}: bit-exact={ok}")


def launch_packed(path: Path, launches: int) -> None:
    """Decode every lanes-coded tensor of a packed checkpoint with the plan the library builds, `launches` times."""
    reader = PackedReader(path)
    pairs = []
    for name in reader.names_by_shard():
        packed = reader.get_packed(name)
        if packed.encoding == "lanes":
            packed = packed.to("cuda")
            pairs.append((packed, torch.empty(packed.numel, dtype=packed.torch_dtype, device="cuda")))
    plan = kd.DecodePlan([kd.DecodeItem.from_packed(p, out) for p, out in pairs])
    for _ in range(launches):
        plan.launch()
    torch.cuda.synchronize()
    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.cpu().reshape(-1).view(torch.int16 if t.element_size() == 2 else torch.int32)

    ok = all(torch.equal(bits(out), bits(p.decode(backend="cpu"))) for p, out in pairs)
    print(f"{path}: {len(pairs)} tensors, configs {plan.configs()}: bit-exact={ok}")


if __name__ == "__main__":
    main()
