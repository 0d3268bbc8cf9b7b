"""Where a cell runs, decided in one place before its job starts.

The cell's resources (the protocol's `gpus` and `processes`) and what the process can see
(`CUDA_VISIBLE_DEVICES` through `torch.cuda`, the distributed environment that submitit or torchrun
exported) resolve to a `Placement`: the device, the world size and this process's rank, the CPUs for
data loading. A protocol that asks for GPUs where none is visible is an error (the cell ends as a
failed record saying so): nothing silently runs on the CPU. A protocol with `gpus: 0` runs on the CPU
even where GPUs exist.

The recipe's global batch is kept whatever the world size (`batch_plan`): per-device batch = the
recipe's, and gradient accumulation makes up for devices a cluster profile took away.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from harness.errors import HarnessError


class DeviceError(HarnessError):
    """The cell cannot run where it is; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class Placement:
    device: str  # torch device of this process: "cpu" or "cuda:<local rank>"
    accelerator: str  # "cpu" | "cuda"
    name: str  # the GPU's name, or the CPU's
    gpus: int  # GPUs the cell uses in all (one per process on CUDA; 0 on the CPU)
    world_size: int  # processes of the cell
    rank: int
    local_rank: int
    backend: str | None  # torch.distributed backend when world_size > 1 (nccl on CUDA, gloo on the CPU)
    cpus: int  # CPU cores this process may use (data-loading workers come from these)
    torch: str
    cuda: str | None  # CUDA version torch was built with, where it runs on CUDA

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def record(self) -> dict:
        return asdict(self)


def dist_env(env=None) -> tuple[int, int, int]:
    """(world size, rank, local rank) exported by submitit (`TorchDistributedEnvironment().export()`)
    or torchrun; (1, 0, 0) for a single process."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise DeviceError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return world, rank, local


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what Slurm's cgroup / taskset gives this process
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def no_gpu_here(env=None) -> bool:
    """Whether this machine clearly has no GPU for this process (CUDA_VISIBLE_DEVICES empty or -1, or no
    NVIDIA device node), told without importing torch: for `sdd plan`'s advice, never for placing a cell."""
    import glob

    env = os.environ if env is None else env
    if env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not glob.glob("/dev/nvidia[0-9]*")


def resolve(gpus: int, *, cpus: int | None = None, env=None) -> Placement:
    """The placement of a cell that asks for `gpus` GPUs (0: the CPU) in this process."""
    import torch

    env = os.environ if env is None else env
    world, rank, local = dist_env(env)
    own_cpus = min(available_cpus(), cpus) if cpus else available_cpus()
    if gpus == 0:
        return Placement(
            device="cpu",
            accelerator="cpu",
            name=cpu_name(),
            gpus=0,
            world_size=world,
            rank=rank,
            local_rank=local,
            backend="gloo" if world > 1 else None,
            cpus=own_cpus,
            torch=torch.__version__,
            cuda=None,
        )
    if not torch.cuda.is_available():
        raise DeviceError(
            f"the protocol asks for {gpus} GPU(s), but this process sees none (host {platform.node()}, "
            f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '(unset)')!r}, torch {torch.__version__} "
            f"built for CUDA {torch.version.cuda or 'none'}); nothing was run on the CPU instead. Submit it to a "
            f"GPU partition (cluster profile), or use a protocol with `gpus: 0`."
        )
    visible = torch.cuda.device_count()
    if local >= visible:
        raise DeviceError(
            f"rank {rank} (local rank {local}) has no GPU of its own: {visible} visible on "
            f"{platform.node()} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '(unset)')!r})"
        )
    return Placement(
        device=f"cuda:{local}",
        accelerator="cuda",
        name=torch.cuda.get_device_name(local),
        gpus=world,
        world_size=world,
        rank=rank,
        local_rank=local,
        backend="nccl" if world > 1 else None,
        cpus=own_cpus,
        torch=torch.__version__,
        cuda=torch.version.cuda,
    )


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """How a recipe's global batch runs here: `per_device` samples a forward pass on each of `world_size`
    processes, gradients accumulated over `accumulation` passes per optimizer step."""

    global_batch: int
    per_device: int
    accumulation: int
    world_size: int
    recipe_devices: int

    def record(self) -> dict:
        return {
            "global": self.global_batch,
            "per_device": self.per_device,
            "accumulation": self.accumulation,
            "world_size": self.world_size,
            "recipe_devices": self.recipe_devices,
        }


def batch_plan(global_batch: int, recipe_devices: int, world_size: int) -> BatchPlan:
    """Per-device batch and gradient accumulation that keep the recipe's global batch on `world_size`
    processes. The per-device batch is the recipe's (global / recipe devices), so memory per device is
    the recipe's; fewer devices accumulate gradients, more devices split the batch further."""
    recipe_devices = max(1, recipe_devices)
    if world_size <= recipe_devices:
        if global_batch % recipe_devices or recipe_devices % world_size:
            raise DeviceError(
                f"the recipe's global batch {global_batch} over {recipe_devices} device(s) cannot run "
                f"on {world_size}: {recipe_devices} must be a multiple of {world_size} and divide the "
                f"batch"
            )
        per, accum = global_batch // recipe_devices, recipe_devices // world_size
    else:
        if global_batch % world_size:
            raise DeviceError(f"the global batch {global_batch} does not split over {world_size} processes")
        per, accum = global_batch // world_size, 1
    return BatchPlan(
        global_batch=global_batch,
        per_device=per,
        accumulation=accum,
        world_size=world_size,
        recipe_devices=recipe_devices,
    )


def data_workers(placement: Placement, requested: int | None = None) -> int:
    """DataLoader workers: the protocol's `num_workers` when it sets one, else every CPU of this process
    but one (kept for the main process that feeds the device)."""
    if requested is not None:
        return int(requested)
    return max(0, placement.cpus - 1)


def init_distributed(placement: Placement, timeout_s: int = 1800) -> bool:
    """Initialise torch.distributed for a multi-process cell (env:// from the exported environment);
    returns True when this call created the process group (and should destroy it)."""
    import datetime

    import torch
    import torch.distributed as dist

    if not placement.distributed or (dist.is_available() and dist.is_initialized()):
        return False
    if placement.accelerator == "cuda":
        torch.cuda.set_device(placement.local_rank)
    dist.init_process_group(placement.backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True
