"""DistributedDataParallel helpers shared by the training scripts (``training/train_*.py``).

A script launched by ``torchrun`` (``WORLD_SIZE`` > 1 in its environment) joins the process group: NCCL when it
trains on GPUs, gloo on CPUs. The training semantics do not depend on the number of processes:

- ``batch_size`` is the GLOBAL batch: every step the ranks agree on the same global batch (the same seeded draw)
  and each takes its shard (``torch.utils.data.DistributedSampler`` over the batch positions), ``batch_size /
  world`` samples;
- each sample's augmentation is seeded by its place in the run (seed, epoch, step, position in the global batch),
  not by the rank that happens to process it;
- BatchNorm statistics are those of the global batch (``sync_batchnorm``: ``torch.nn.SyncBatchNorm`` on GPUs, an
  all-reduce of the per-channel sums on CPUs, where ``SyncBatchNorm`` has no kernel);
- gradients are averaged over the ranks by DDP, and the logged loss is the mean over the ranks.

So 2 processes with batch 2 x 4 take the same steps as 1 process with batch 8 (up to float summation order);
dropout masks are the exception (drawn per rank: equal in distribution, not in value). Rank 0 alone validates,
logs and writes checkpoints (``Context.main``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import MedAIInputError


@dataclass
class Context:
    """This process's place in the run: ``rank`` of ``world`` processes, the ``device`` it trains on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, logs and checkpoints."""
        return self.rank == 0


def resolve_device(requested: str | None = "auto") -> torch.device:
    """``auto`` (CUDA when PyTorch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking for CUDA where there is none is an error that says why, not a silent fall-back to the CPU.
    """
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            built = torch.version.cuda
            reason = (f"this PyTorch ({torch.__version__}) is built without CUDA" if not built else
                      f"PyTorch (CUDA {built}) sees no GPU (driver missing, or CUDA_VISIBLE_DEVICES hides them)")
            raise MedAIInputError(f"--device {requested}: {reason}; use --device cpu or --device auto")
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MedAIInputError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise MedAIInputError(f"--device {requested}: expected auto, cpu, cuda or cuda:N")


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain ``python`` run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str | None = "auto") -> Context:
    """Resolve the device and, under torchrun, join the process group (NCCL on GPUs, gloo on CPUs); each rank
    of a GPU run takes the GPU of its ``LOCAL_RANK``."""
    rank, world, local_rank = world_from_env()
    resolved = resolve_device(device)
    if world > 1:
        if resolved.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise MedAIInputError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible on "
                                      "this node; start at most that many processes per node (--nproc-per-node)")
            resolved = torch.device("cuda", local_rank)
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    return Context(rank=rank, world=world, local_rank=local_rank, device=resolved)


def cleanup(ctx: Context) -> None:
    """Wait for every rank, then leave the process group."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_batch_size(global_batch: int, ctx: Context) -> int:
    """This rank's share of a global batch; the global batch must split evenly over the ranks."""
    if global_batch % ctx.world:
        raise MedAIInputError(f"batch_size {global_batch} (the global batch) does not split over {ctx.world} "
                              f"processes; use a multiple of {ctx.world}")
    return global_batch // ctx.world


def shard(n: int, ctx: Context) -> list[int]:
    """Positions ``0..n-1`` of a global batch (or epoch order) that this rank processes: every ``world``-th
    from ``rank`` (``DistributedSampler`` without shuffling; ``n`` divisible by ``world``)."""
    from torch.utils.data import DistributedSampler

    if n % ctx.world:
        raise MedAIInputError(f"{n} samples do not split over {ctx.world} processes")
    return list(DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=False, drop_last=True))


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """A 31-bit seed for one sample's augmentation, fixed by its place in the run and not by the rank."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(epoch), int(step), int(position)]).generate_state(1)[0]
               & 0x7FFFFFFF)


def mean_over_ranks(values, ctx: Context) -> list[float]:
    """Element-wise mean of per-rank numbers (equal shard sizes: the global mean of per-sample means)."""
    values = [float(v) for v in values]
    if not ctx.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return (tensor / ctx.world).tolist()


def min_over_ranks(value: float, ctx: Context) -> float:
    """The smallest of the ranks' values (e.g. so that all ranks skip a step together)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([float(value)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor.item()


def broadcast_flag(flag: bool, ctx: Context) -> bool:
    """Rank 0's decision (e.g. early stop), on every rank."""
    if not ctx.distributed:
        return bool(flag)
    tensor = torch.tensor([float(flag)], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.broadcast(tensor, 0)
    return bool(tensor.item())


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the global batch's over all ranks, on CPU (gloo).

    Per-channel sums and count, then sums of squared deviations, are all-reduced with autograd
    (``torch.distributed.nn.functional.all_reduce``), so the gradient through the statistics is also the global
    batch's. Same parameters, buffers and state-dict keys as ``nn.BatchNorm{1,2,3}d``; outside a distributed
    training forward it is plain BatchNorm.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:channels] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n  # two passes: as exact as a one-process BatchNorm
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1).clamp_min(1))
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, ctx: Context) -> nn.Module:
    """Make the model's BatchNorm layers use global-batch statistics when ``ctx`` is distributed (in place where
    possible; the same Parameter objects are kept, so optimisers and weight averages built before still apply)."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        converted = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (already on ``ctx.device``) when distributed, else ``model``."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (what is saved and validated)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
