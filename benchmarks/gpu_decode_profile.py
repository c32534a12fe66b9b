"""Launch the decode kernel on a 67M-weight bf16 tensor a few times, for a profiler to read.

Run under Nsight Compute to see what limits the kernel (stall reasons, occupancy, memory):

    ncu --clock-control none -k regex:decode_lanes --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python benchmarks/gpu_decode_profile.py --steps 256 --group 2

With --packed DIR it launches instead the plan the library builds for every coded tensor of a packed
checkpoint (kernel `_decode_many_kernel`: `-k regex:decode_many`), e.g. the packed MiniLM demo model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_decode_ab import packed, packed_checkpoint_plan  # noqa: E402

from unweight.kernels import decode as kd  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--group", type=int, default=0, help="runs of neighbours a lane (0: what compress picks)")
    p.add_argument("--table", type=int, default=kd.DEFAULT_CONFIG.table)
    p.add_argument("--launches", type=int, default=4)
    p.add_argument("--packed", type=Path, default=None, help="a packed checkpoint: launch its DecodePlan instead")
    args = p.parse_args()
    if args.packed is not None:  # checked bit for bit before the launches
        plan, _ = packed_checkpoint_plan(args.packed, "cuda", {})
        for _ in range(args.launches):
            plan.launch()
        torch.cuda.synchronize()
        print(f"{args.packed}: configs {plan.configs()}")
        return
    weights, tensor = packed((8192, 8192), 0, args.steps, "cuda", args.group)
    out = torch.empty_like(weights)
    item = kd.DecodeItem.from_packed(tensor, out.view(-1))
    for _ in range(args.launches):
        kd.launch_decode(item, kd.DecodeConfig(table=args.table))
    torch.cuda.synchronize()
    ok = torch.equal(out.view(torch.int16), weights.view(torch.int16))
    print(f"steps={args.steps} group={tensor.group} table={args.table}: bit-exact={ok}")


if __name__ == "__main__":
    main()
