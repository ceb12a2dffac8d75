"""``batude train`` and ``batude compress``: dense training and BATUDE / baseline compression.

Both run data-parallel when launched with ``torchrun --nproc_per_node=N -m batude ...``: one
process per GPU (nccl) or CPU process (gloo), ``--batch-size`` is the global batch, and only rank 0
writes files and prints.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from batude._io import write_text_atomic
from batude.checkpoint import Checkpoint, save
from batude.cli._common import ProgressBar, add_model_args, load_from_args, non_negative_int
from batude.cli.model_cmds import (add_selector_args, latency_summary, latency_table_from_args, plan_summary, require_dense,
                                  selector_config, skipped_summary)
from batude.data import DataSpec, load_datasets, make_loader
from batude.errors import BatudeError
from batude.models.registry import ArchRef
from batude.nn.profile import flop_counter_macs
from batude.rank.bcadl import BCADLConfig
from batude.rank.greedy import HOLD, Score
from batude.train import CompressConfig, CompressMethod, TrainConfig, compress, train_model
from batude.train.config import COMPILE_MODES
from batude.train.distributed import World, distributed_session
from batude.train.loop import seed_everything

__all__ = ["register", "add_data_args", "loaders_from_args"]


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (Debian package), cifar10 (python batches dir) or folder")
    p.add_argument("--data-dir", default=None, help="dataset location (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--subset", type=int, default=None, metavar="N", help="use N training images (and N/5 test) for quick runs")
    p.add_argument("--no-augment", action="store_true", help="disable random crop + flip")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--compile", choices=COMPILE_MODES, default=None,
                   help="torch.compile the training step in this mode (GPU: fewer kernel launches; compiles in the first steps)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, log, report)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")


def loaders_from_args(args: argparse.Namespace, world: World | None = None):
    """Train and test loaders (this rank's shards in a data-parallel run), dataset info and spec."""
    world = world or World()
    spec = DataSpec(args.data, root=args.data_dir, subset=args.subset, augment=not args.no_augment)
    train, test, info = load_datasets(spec)
    pin = torch.cuda.is_available() and not str(args.device or "cuda").startswith("cpu")  # asynchronous copies to the GPU
    shard = {"rank": world.rank, "world_size": world.size, "pin_memory": pin}
    return (make_loader(train, args.batch_size, True, args.seed, args.workers, **shard),
            make_loader(test, 512, False, args.seed, args.workers, **shard), info, spec)


def _arch_for(name: str, info) -> ArchRef:
    ref = name if ":" in name else f"batude:{name}"
    kwargs = {"num_classes": info.num_classes}
    if ref.startswith("batude:"):
        kwargs["in_channels"] = info.in_channels
    elif info.in_channels != 3:
        raise BatudeError(f"{ref} expects 3-channel images but {info.name} has {info.in_channels}; use batude:resnet20/32/56")
    return ArchRef(ref, kwargs)


def _train_config(args: argparse.Namespace, epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, label_smoothing=args.label_smoothing,
                       seed=args.seed, device=args.device, num_workers=args.workers, compile=args.compile)


def _cmd_train(args: argparse.Namespace) -> int:
    with distributed_session(args.device) as world:
        train_loader, test_loader, info, spec = loaders_from_args(args, world)
        arch = _arch_for(args.model, info)
        seed_everything(args.seed)  # the initial weights are part of the run
        model = arch.build()
        cfg = _train_config(args, args.epochs, args.lr)
        result = train_model(model, train_loader, test_loader, cfg, args.out, args.resume, ProgressBar() if world.main else None)
        if not world.main:
            return 0
    shape = [1, info.in_channels, *info.image_size]
    save(Path(args.out) / "model.pt", model.cpu(), arch=arch,
         metadata={"input_shape": shape, "data": spec.to_dict(), "test_accuracy": result.accuracy})
    print(f"test accuracy {result.accuracy:.2f}% after {args.epochs} epochs -> {Path(args.out) / 'model.pt'}")
    return 0


def _compress_config(args: argparse.Namespace) -> CompressConfig:
    sel = selector_config(args)
    bcadl = BCADLConfig(rho0=args.rho0, rho_growth=args.rho_growth, rho_max=args.rho_max, lam=args.lam,
                        min_rank=sel.min_rank, multiple_of=sel.multiple_of, layer_filter=sel.layer_filter, score=Score(args.score),
                        hold=args.hold)
    return CompressConfig(method=args.method, epochs_admm=args.epochs_admm, epochs_ft=args.epochs_ft, lr_admm=args.lr_admm,
                          lr_ft=args.lr_ft, updates_per_epoch=args.updates_per_epoch, bcadl=bcadl, kd=args.kd,
                          hooi_iters=args.hooi_iters, train=_train_config(args, args.epochs_admm + args.epochs_ft, args.lr_ft))


def _cmd_compress(args: argparse.Namespace) -> int:
    cfg = _compress_config(args)
    with distributed_session(args.device) as world:
        ckpt: Checkpoint = load_from_args(args)[0]
        require_dense(ckpt, args.model)
        train_loader, test_loader, info, spec = loaders_from_args(args, world)
        table = latency_table_from_args(args, (1, info.in_channels, *info.image_size))
        start = time.perf_counter()
        result = compress(ckpt.model, train_loader, test_loader, args.budget, cfg, args.out, args.resume,
                          ProgressBar() if world.main else None, latency=table, also=args.also or ())
        if not world.main:  # rank 0 writes the outputs and reports
            return 0
    return _write_compress_outputs(args, cfg, ckpt, result, info, spec, time.perf_counter() - start, world.size)


def _write_compress_outputs(args: argparse.Namespace, cfg: CompressConfig, ckpt: Checkpoint, result, info, spec,
                            seconds: float, processes: int) -> int:
    out = Path(args.out)
    model, shape = result.model.cpu().float(), (1, info.in_channels, *info.image_size)
    plan = result.plan.with_arch(ckpt.arch.ref if ckpt.arch else None)
    plan.save(out / "plan.json")
    save(out / "model.pt", model, plan=plan, arch=ckpt.arch, metadata={"input_shape": list(shape), "data": spec.to_dict(), "test_accuracy": result.accuracy})
    dense_macs, macs = plan.dense_macs, flop_counter_macs(model, shape)
    report = {
        "method": cfg.method.value, "budget": args.budget.to_dict(), "data": spec.to_dict(), "config": cfg.to_dict(),
        "accuracy": {"dense": result.dense_accuracy, "decomposed_before_finetune": result.decomposed_accuracy,
                     "final": result.accuracy, "drop": result.dense_accuracy - result.accuracy},
        "counted": "conv+linear MACs per image (FLOPs = 2 * MACs), compressed model measured with FlopCounterMode",
        "dense_macs": dense_macs, "macs": macs, "macs_reduction": dense_macs / macs,
        "dense_params": plan.dense_params, "params": plan.params, "params_reduction": plan.params_reduction,
        "ranks": {l.name: (list(l.ranks) if l.ranks else None) for l in plan.layers},
        "seconds": round(seconds, 1), "processes": processes, "torch": str(torch.__version__), "epochs": result.log,
        "latency": plan.latency,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(plan_summary(plan))
    if plan.latency:
        print(latency_summary(plan))
    if plan.skipped:
        print(skipped_summary(plan))
    print(f"accuracy: dense {result.dense_accuracy:.2f}% -> decomposed {result.decomposed_accuracy:.2f}% -> "
          f"fine-tuned {result.accuracy:.2f}%; wrote {out / 'model.pt'}, plan.json, report.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a dense model (e.g. ResNet-20 on Fashion-MNIST)")
    p.add_argument("--model", default="resnet20", help="resnet20/32/56 (batude), or torchvision:NAME for 3-channel data")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    add_data_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compress", help="compress a trained checkpoint to a budget (BATUDE or a baseline) and fine-tune")
    add_model_args(p, input_option=False)
    add_selector_args(p, methods=[m.value for m in CompressMethod], default="batude")
    p.add_argument("--epochs-admm", type=int, default=2, help="BC-ADL epochs (baselines fine-tune these epochs instead)")
    p.add_argument("--epochs-ft", type=int, default=2, help="fine-tuning epochs after decomposition")
    p.add_argument("--lr-admm", type=float, default=0.01)
    p.add_argument("--lr-ft", type=float, default=0.005)
    p.add_argument("--kd", action="store_true", help="distil from the dense model while fine-tuning")
    p.add_argument("--rho0", type=float, default=1e-3)
    p.add_argument("--rho-growth", type=float, default=1.5)
    p.add_argument("--rho-max", type=float, default=1.0)
    p.add_argument("--lam", type=float, default=1e-4, help="nuclear-norm weight lambda")
    p.add_argument("--updates-per-epoch", type=int, default=1, help="BC-ADL Z/U updates per epoch")
    p.add_argument("--score", choices=[s.value for s in Score], default=Score.JOINT_PER_COST.value, help="greedy rule's removal score")
    p.add_argument("--hold", choices=HOLD, default="auto",
                   help="when the greedy rule holds layers dense: auto (to meet the limits, and with a latency limit "
                        "while it keeps more value), to-fit (only to meet them), never (rank steps alone, the paper's rule)")
    p.add_argument("--hooi-iters", type=non_negative_int, default=0, help="HOOI iterations after the SVD init (default 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    add_data_args(p)
    p.set_defaults(func=_cmd_compress)
