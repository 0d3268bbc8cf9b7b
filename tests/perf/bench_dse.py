"""Benchmark (not a test): DSE and the whole metric suite on 2,048 x 196 x 384 structured features.

Prints wall time and peak RSS above the features for parity and fast mode, each in a fresh process.
Run: make bench   (or: python tests/perf/bench_dse.py [--images 2048])
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from harness.metrics.dse import dse
B, N, d, mode = int(sys.argv[1]), 196, 384, sys.argv[2]
g = torch.Generator().manual_seed(0)
protos = torch.randn(64, d, generator=g)
cls = torch.randint(0, 64, (B, 4), generator=g)
which = torch.randint(0, 4, (B, N), generator=g)
z = torch.empty(B, N, d)
for i in range(0, B, 64):  # filled in slices, so the RSS high-water mark starts at the features themselves
    rows = protos[torch.gather(cls[i:i + 64], 1, which[i:i + 64])]
    z[i:i + 64] = rows + 0.6 * torch.randn(len(z[i:i + 64]), N, d, generator=g)
extra = {}
if mode == "suite":  # every metric of the protocol, DSE in fast mode, LiDAR on 1,000 x 50 synthetic views
    from harness.metrics import compute_all
    views = torch.randn(1000, 50, d, generator=g) + torch.randn(1000, 1, d, generator=g) * 2
    params = {"dse": {"mode": "fast"}, "tokens_per_image": 16, "lidar": {}}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "suite":
    m, _, per = compute_all(z, params, views)
    value, extra = m["dse"], {k: round(v, 3) for k, v in per.items()}
else:
    value = dse(z, mode=mode).dse
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "wall_s": wall, "peak_above_features_mib": (peak - base) / 1024,
                  "features_mib": z.numel() * 4 / 2**20, "dse": value, "per_metric_s": extra}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--modes", default="fast,parity,suite")
    args = ap.parse_args()
    print(f"DSE on {args.images} x 196 x 384 float32 features, 2 threads")
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.images), mode], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            sys.exit(1)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"  {mode:6s} wall {r['wall_s']:7.2f} s   peak RSS above features {r['peak_above_features_mib']:7.0f} MiB"
            f"   (features {r['features_mib']:.0f} MiB)   DSE {r['dse']:.4f}"
        )
        if r["per_metric_s"]:
            print("         per metric (s): " + ", ".join(f"{k} {v}" for k, v in r["per_metric_s"].items()))


if __name__ == "__main__":
    main()
