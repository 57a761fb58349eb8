"""`train(TrainConfig, model=None, train_data=None, test_data=None) -> dict`: one
adversarial-training run with step.train_step, on a named model and dataset or on your own.

Writes to cfg.out_dir: config.json (the resolved config), metrics.jsonl (CO-monitor rows, every
cfg.monitor_every iterations and at every epoch end), checkpoint.pt (each epoch, atomically:
resumable to bitwise the same weights on CPU), best.pt (the weights of best monitored PGD
accuracy, for early stopping) and final.json (accuracies of the final model and times).
Under torchrun it trains with DDP (see gradalign_fast.training.distributed); rank 0 writes the files.
One process at a time holds a run directory (gradalign_fast.training.rundir).
"""
from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .. import attacks, precision
from . import checkpoint, distributed, evaluation, optim, recipe, rundir
from .datasets import load_dataset, make_loader, spec, take
from .methods import METHODS, make_method
from .step import train_step
from .models import MODELS
from .monitor import COMonitor, MetricsLog

CHECK_EVERY = 20  # iterations between loss checks / progress-bar updates (one device sync)
RUN_FILES = rundir.RUN_FILES
USER_MODEL = "user:"  # TrainConfig.model of a model passed to train(): "user:<module>.<class>"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


# What a command reports as `error: ...` (bad input, missing data or package, divergence);
# checkpoint.CheckpointError is a ValueError.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError, TrainingDiverged)


@dataclass
class TrainConfig:
    """One training run. None fields take the dataset's recipe (gradalign_fast.training.recipe) value
    at resolve(); eps is in [0, 1] input units (8/255, 0.3, ...)."""

    method: str = "gradalign"
    dataset: str = "mnist_subset"
    recipe: str | None = None  # a key of recipe.RECIPES; None: the dataset's default recipe
    data_dir: str | None = None
    model: str | None = None
    eps: float | None = None
    lam: float | None = None  # GradAlign(_adaptive): None -> lambda_for_eps; else class default
    # extra keyword options of the method, e.g. GradAlign's approximate modes
    # {"fraction": 0.25}, {"every": 2}, {"mode": "linearity"} (see GradAlignLoss)
    method_options: dict = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None  # the global batch (split over DDP processes)
    lr_max: float | None = None
    optimizer: str | None = None  # sgd | adam (optim.OPTIMIZERS)
    momentum: float | None = None  # SGD's (None for Adam)
    wd: float | None = None
    eps_warmup_epochs: float | None = None
    lr_schedule: str | None = None  # cyclic | piecewise | constant
    n_train: int | None = None  # train on the first n_train points (None: all but the monitor's)
    n_eval: int | None = 1000  # final evaluation on the first n_eval test points (None: all)
    # PGD-50-10 on n_eval points, and the worst case of PGD-50-10 and AutoAttack on the first
    # 500 (AutoAttack on the PGD-robust points only); see evaluation.parse_attacks
    eval_attacks: str = "clean,pgd-50-10,pgd-50-10+autoattack@500"
    n_monitor: int = 256  # held-out training points (the last ones) of the CO monitor
    seed: int = 0
    device: str | None = None  # None: cuda if available, else cpu
    # mixed precision: None (float32) or a policy of gradalign_fast.precision.POLICIES:
    # "bf16", "bf16-reg-fp32", "bf16-bn-fp32" (GradAlign methods), "fp16" (GradScaler)
    amp: str | None = None
    out_dir: str = "runs/run"
    monitor_every: int = 200  # iterations; 0: only at epoch ends
    # iterations between weight snapshots (out_dir/snapshots/it<N>.pt, read by the
    # `fidelity` command); 0: none
    snapshot_every: int = 0
    stop_on_co: bool = False
    resume: bool = False
    sync_bn: bool = False
    num_workers: int = 0
    progress: bool = True  # progress bars, and one summary line per epoch


def check_device(name: str) -> torch.device:
    """torch.device(name) for cpu or an available CUDA GPU; ValueError otherwise."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: gradalign_fast runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available here "
                         f"(torch.cuda.is_available() is False); use cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA GPUs")
    return dev


def _fit_warmup(cfg: TrainConfig, r: recipe.Recipe, from_recipe: bool) -> TrainConfig:
    """An eps warm-up longer than the run never reaches eps: one given explicitly is refused,
    the recipe's is scaled to the same fraction of this shorter run (with a warning)."""
    if cfg.eps_warmup_epochs <= cfg.epochs:
        return cfg
    if not from_recipe:
        raise ValueError(f"eps_warmup_epochs={cfg.eps_warmup_epochs:g} is longer than the run "
                         f"(epochs={cfg.epochs}): eps would never reach {cfg.eps * 255:g}/255; "
                         f"give at most {cfg.epochs} warm-up epochs")
    scaled = r.eps_warmup_epochs * cfg.epochs / r.epochs
    warnings.warn(f"the {cfg.recipe} recipe's eps warm-up ({r.eps_warmup_epochs:g} epochs of "
                  f"{r.epochs}) is longer than this {cfg.epochs}-epoch run: eps is ramped over "
                  f"the first {scaled:g} epochs instead (the same fraction of training)",
                  stacklevel=3)
    return replace(cfg, eps_warmup_epochs=scaled)


def resolve(cfg: TrainConfig) -> TrainConfig:
    """cfg with the recipe's defaults filled in, validated (ValueError naming the field)."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(METHODS)}")
    spec(cfg.dataset)
    if cfg.recipe is None:
        cfg = replace(cfg, recipe=recipe.default_recipe(cfg.dataset))
    r = recipe.recipe_for(cfg.recipe, cfg.method)
    filled = {name: getattr(r, name) for name in recipe.CONFIG_FIELDS
              if getattr(cfg, name) is None}
    cfg = replace(cfg, **filled)
    if "momentum" in filled and cfg.optimizer != r.optimizer:  # the recipe's is its optimizer's
        cfg = replace(cfg, momentum=optim.DEFAULT_MOMENTUM.get(cfg.optimizer))
    optim.check(cfg.optimizer, cfg.momentum)
    if cfg.device is None:
        cfg = replace(cfg, device="cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model not in MODELS and not str(cfg.model).startswith(USER_MODEL):
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(MODELS)}, or "
                         f"pass your own: train(config, model=...)")
    if not (isinstance(cfg.eps, (int, float)) and 0 <= cfg.eps <= 1):
        raise ValueError(f"eps must be in [0, 1] (input units, e.g. 8/255), got {cfg.eps!r}")
    method_cls = METHODS[cfg.method]
    if cfg.lam is not None and not method_cls.takes_lam:
        takes = sorted(n for n, m in METHODS.items() if m.takes_lam)
        raise ValueError(f"lam applies only to {takes}, not to {cfg.method!r}")
    if method_cls.uses_gradalign_loss and cfg.lam is None:
        cfg = replace(cfg, lam=recipe.lambda_for_eps(cfg.eps * 255, r.lam_table))
    if cfg.method == "cure" and cfg.lam is None:
        raise ValueError("method 'cure' needs lam (no default: its scale depends on the data)")
    if cfg.lam is not None and not (math.isfinite(cfg.lam) and cfg.lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {cfg.lam}")
    if cfg.amp is not None:
        amp = precision.policy(cfg.amp)
        if amp.amp is None:  # "float32": no autocast, recorded as such
            cfg = replace(cfg, amp=None)
        elif amp.reg_precision != "autocast" and not method_cls.uses_gradalign_loss:
            raise ValueError(f"amp policy {cfg.amp!r} sets the precision of GradAlign's pass; "
                             f"method {cfg.method!r} has none: use amp={amp.amp!r}")
    try:  # bad method options fail here, before any data is loaded
        make_method(cfg.method, cfg.eps, **_method_kwargs(cfg))
    except TypeError as e:
        raise ValueError(f"method {cfg.method!r} does not take the options "
                         f"{cfg.method_options}: {e}") from None
    for name in ("epochs", "batch_size", "n_monitor"):
        if not (isinstance(getattr(cfg, name), int) and getattr(cfg, name) > 0):
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)!r}")
    for name in ("n_train", "n_eval"):
        v = getattr(cfg, name)
        if v is not None and not (isinstance(v, int) and v > 0):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    if not cfg.lr_max > 0:
        raise ValueError(f"lr_max must be > 0, got {cfg.lr_max}")
    if cfg.lr_schedule not in recipe.LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose one of "
                         f"{recipe.LR_SCHEDULES}")
    if cfg.sync_bn and torch.device(cfg.device).type != "cuda":
        raise ValueError("sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only")
    if cfg.sync_bn and METHODS[cfg.method].double_backprop:
        raise ValueError(f"sync_bn does not work with {cfg.method!r}: torch's SyncBatchNorm "
                         f"backward is not twice differentiable, and {cfg.method} "
                         f"double-backpropagates; use plain (per-process) BatchNorm")
    check_device(cfg.device)  # after sync_bn's checks: they say more than "no GPU"
    if cfg.monitor_every < 0:
        raise ValueError(f"monitor_every must be >= 0, got {cfg.monitor_every}")
    if cfg.eps_warmup_epochs < 0:
        raise ValueError(f"eps_warmup_epochs must be >= 0, got {cfg.eps_warmup_epochs}")
    if evaluation.needs_torchattacks(evaluation.parse_attacks(cfg.eval_attacks)):
        try:
            evaluation.torchattacks()
        except ImportError as e:
            raise ImportError(f"{e}; or leave autoattack and square out of eval_attacks "
                              f"(--eval-attacks clean,pgd-50-10)") from None
    return _fit_warmup(cfg, r, "eps_warmup_epochs" in filled)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hold_out(cfg: TrainConfig, full: Dataset, plain: Dataset, where: str):
    """(training set, monitor set): the monitor holds out the last n_monitor points of `full`
    (taken from `plain`, the same points without augmentation)."""
    n_avail = len(full) - cfg.n_monitor
    if n_avail <= 0:
        raise ValueError(f"n_monitor={cfg.n_monitor} leaves no training point of the "
                         f"{len(full)} in {where}")
    if cfg.n_train is not None and cfg.n_train > n_avail:
        raise ValueError(f"n_train={cfg.n_train} but {where} has {n_avail} training points "
                         f"besides the {cfg.n_monitor} held out for the monitor")
    return (Subset(full, range(cfg.n_train or n_avail)),
            Subset(plain, range(len(full) - cfg.n_monitor, len(full))))


def _check_points(data, what: str) -> None:
    """The first item of a user's Dataset (or batch of a DataLoader) is an (x, y) pair of
    tensors: x floating point, y integer labels."""
    try:
        item = data[0] if isinstance(data, Dataset) else next(iter(data))
        x, y = item
    except (TypeError, ValueError, IndexError, StopIteration) as e:
        raise ValueError(f"{what}: its items must be (x, y) pairs ({type(e).__name__}: "
                         f"{e})") from None
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if not x.is_floating_point():
        raise ValueError(f"{what}: x must be floating point (inputs in [0, 1]), got {x.dtype}")
    if y.is_floating_point():
        raise ValueError(f"{what}: y must be integer class labels, got {y.dtype}")


def _datasets(cfg: TrainConfig, train_data=None, test_data=None):
    """(training set or loader, monitor set, test set) of cfg.dataset, or of the user's data
    (a Dataset: the monitor holds out its last n_monitor points; a DataLoader: used as it is,
    the monitor on the last n_monitor points of its dataset, which it also trains on)."""
    if train_data is None:
        full = load_dataset(cfg.dataset, cfg.data_dir, train=True)
        plain = load_dataset(cfg.dataset, cfg.data_dir, train=True, augment=False)
        train_set, monitor_set = _hold_out(cfg, full, plain, repr(cfg.dataset))
        return train_set, monitor_set, load_dataset(cfg.dataset, cfg.data_dir, train=False)
    if test_data is None:
        raise ValueError("train_data given without test_data: pass test_data too (the final "
                         "evaluation runs on it)")
    _check_points(train_data, "train_data")
    _check_points(test_data, "test_data")
    test_set = test_data.dataset if isinstance(test_data, DataLoader) else test_data
    if isinstance(train_data, DataLoader):
        if cfg.n_train is not None:
            raise ValueError("n_train selects points of a Dataset; train_data is a DataLoader "
                             "(it trains on what it yields)")
        data = train_data.dataset
        if cfg.n_monitor > len(data):
            raise ValueError(f"n_monitor={cfg.n_monitor} but train_data's dataset has "
                             f"{len(data)} points")
        return train_data, Subset(data, range(len(data) - cfg.n_monitor, len(data))), test_set
    train_set, monitor_set = _hold_out(cfg, train_data, train_data, "train_data")
    return train_set, monitor_set, test_set


def user_model_name(model: nn.Module) -> str:
    """TrainConfig.model for a model of the user's: "user:<module>.<class>"."""
    cls = type(model)
    return f"{USER_MODEL}{cls.__module__}.{cls.__qualname__}"


def _method_kwargs(cfg: TrainConfig) -> dict:
    kw = dict(cfg.method_options)
    if cfg.lam is not None:
        kw["lam"] = cfg.lam
    reg = precision.policy(cfg.amp).reg_precision if cfg.amp else "autocast"
    if reg != "autocast":
        if kw.get("precision", reg) != reg:
            raise ValueError(f"amp policy {cfg.amp!r} sets GradAlign's precision to {reg!r} "
                             f"but the method options say {kw['precision']!r}")
        kw["precision"] = reg
    return kw


def _check_labels(net, x, y) -> None:
    """Before training: the monitor's points (held-out training points) have labels the model
    has outputs for (one forward)."""
    labels_max = attacks.check_inputs("training data", net, x, y)
    with torch.no_grad(), evaluation.eval_mode(net):
        attacks.model_loss(net, x[:2], y[:2], F.cross_entropy, "training data", labels_max)


def write_json(path: Path, obj) -> None:
    """obj as JSON at path, written atomically: a run's final.json marks it finished, so it
    is never left half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def train(cfg: TrainConfig, model: nn.Module | None = None, train_data=None,
          test_data=None) -> dict:
    """Runs cfg (see the module doc); returns the final.json dict (rank 0; {} on others).

    model: your own classifier (an nn.Module taking a batch in [0, 1] and returning logits)
        instead of cfg.model; it is trained in place and recorded as "user:<module>.<class>".
        Resume it by passing a model of the same class (same architecture) again.
    train_data, test_data: your own data instead of cfg.dataset's, each a Dataset of (x, y)
        pairs or a DataLoader of (x, y) batches; with a Dataset the trainer batches and
        shuffles it (batch_size, seed) and holds out its last n_monitor points for the CO
        monitor; a DataLoader is used as it is (resume is bitwise only if its order depends
        on no RNG of its own). cfg.dataset then only names the recipe whose defaults fill
        the fields left None (mnist, cifar10, ...).

    Everything that can be checked before training is (config, output directory, data, the
    test-set size, labels against the model's outputs). Raises ValueError for a bad config or
    a run directory in use by another process, FileNotFoundError for missing data,
    checkpoint.CheckpointError for a corrupt or other run's checkpoint on resume, and
    TrainingDiverged when the loss becomes NaN/inf (the last good checkpoint.pt is kept).
    """
    if model is not None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        cfg = replace(cfg, model=user_model_name(model))
    cfg = resolve(cfg)
    if str(cfg.model).startswith(USER_MODEL) and model is None:
        raise ValueError(f"model {cfg.model!r} is a model of your own: pass it, "
                         f"train(config, model=...)")
    info = distributed.setup(cfg.device)
    try:
        out = Path(cfg.out_dir)
        if not info.is_main:
            return _Run(cfg, info, model, train_data, test_data).run()
        rundir.check_writable(out)
        with rundir.locked(out):
            return _Run(cfg, info, model, train_data, test_data).run()
    finally:
        distributed.cleanup(info)


def epoch_line(row: dict, epochs: int) -> str:
    """One line summarising an epoch row of metrics.jsonl (the training averages and the
    CO monitor's measurement)."""
    co = "  <-- catastrophic overfitting" if row["co"] else ""
    return (f"epoch {row['epoch']}/{epochs}: eps {row['eps'] * 255:g}/255, loss "
            f"{row['train_loss']:.3f}, reg {row['train_reg']:.3f}, train acc "
            f"{row['train_acc']:.3f} | monitor: clean {row['clean_acc']:.3f}, FGSM "
            f"{row['fgsm_acc']:.3f}, PGD-10 {row['pgd_acc']:.3f}, grad align "
            f"{row['grad_align']:.3f} | {row['epoch_time_s']:.1f}s{co}")


class _Run:
    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, model=None,
                 train_data=None, test_data=None):
        self.cfg, self.info = cfg, info
        self.user_model, self.user_data = model, (train_data, test_data)
        # config.json and the checkpoints' "config": the TrainConfig, and whether the data
        # was the user's (then cfg.dataset only named the recipe)
        self.config = asdict(cfg) | ({"user_data": True} if train_data is not None else {})
        self.device = distributed.device_for(cfg.device, info)
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / "checkpoint.pt"
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.amp_dtype = precision.policy(cfg.amp).amp_dtype if cfg.amp else None

    # ------------------------------------------------------------------ set-up
    def _setup(self):
        cfg, dev = self.cfg, self.device
        saved = self._check_out_dir()
        _seed_everything(cfg.seed)
        net = (self.user_model if self.user_model is not None
               else checkpoint.model_from_config(self.config)).to(dev)
        self.train_set, monitor_set, self.test_set = _datasets(cfg, *self.user_data)
        if cfg.n_eval is not None and cfg.n_eval > len(self.test_set):
            raise ValueError(f"n_eval={cfg.n_eval} but the test set has {len(self.test_set)} "
                             f"points; give at most {len(self.test_set)} (or None: all)")
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if isinstance(self.train_set, DataLoader):
            if self.info.enabled:
                raise ValueError("train_data as a DataLoader cannot be split over DDP "
                                 "processes: pass a Dataset")
            self.sampler, self.loader = None, self.train_set
        else:
            self.sampler = distributed.sampler(self.train_set, self.info, cfg.seed)
            if cfg.batch_size % self.info.world_size:
                raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                                 f"{self.info.world_size} processes")
            self.loader = make_loader(self.train_set, cfg.batch_size // self.info.world_size,
                                      shuffle=True, generator=self.gen, sampler=self.sampler,
                                      num_workers=cfg.num_workers,
                                      pin_memory=dev.type == "cuda")
        self.opt = optim.build_optimizer(cfg.optimizer, net.parameters(), cfg.momentum, cfg.wd)
        self.scaler = torch.amp.GradScaler(dev.type) if self.amp_dtype == torch.float16 \
            else None
        x_mon, y_mon = take(monitor_set)
        x_mon, y_mon = x_mon.to(dev), y_mon.to(dev)
        _check_labels(net, x_mon, y_mon)
        self.monitor = COMonitor(x_mon, y_mon, cfg.eps, seed=cfg.seed)
        self.start_epoch, self.it, self.train_time = 0, 0, 0.0
        self.method = None  # made at the first step, then kept (see _epoch)
        self._method_state = {}  # a resumed run's Method.state_dict(), loaded into it then
        if saved is not None:
            net.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            if self.scaler is not None:
                self.scaler.load_state_dict(saved["scaler"])
            self.monitor.load_state_dict(saved["monitor"])
            checkpoint.set_rng_state(saved["rng"], self.gen)
            self.start_epoch, self.it = saved["epoch"], saved["iteration"]
            self.train_time = saved["train_time_s"]
            self._method_state = saved.get("method", {})
            if self.info.is_main:
                self.log.keep_until(self.it)
        elif self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", self.config)
        if self.info.enabled:  # same init everywhere (DDP broadcasts it), own noise per rank
            torch.manual_seed(cfg.seed + 1000 * self.info.rank)
        self.model = distributed.wrap(net, self.info, cfg.sync_bn)
        self.net = distributed.unwrap(self.model)

    def _check_out_dir(self):
        """The saved checkpoint of a resumed run (None for a new one). A new run refuses a
        directory holding any run file, except a run stopped before its first checkpoint,
        which it starts afresh (as --resume does there: nothing to resume); a finished run
        (final.json) is never resumed, so its final.json is never rewritten."""
        cfg, out = self.cfg, self.out
        stale = rundir.stale_files(out) if self.info.is_main else []
        if distributed.broadcast_flag(bool(stale), self.info, self.device):
            if self.info.is_main:
                rundir.clear_stale(out, stale)
            return None
        if cfg.resume and not self.ckpt_path.exists() and not (out / "final.json").exists():
            return None  # --resume of a run that never started: it starts
        if (out / "final.json").exists():
            raise ValueError(f"{out} holds a finished run (final.json); nothing is trained or "
                             f"rewritten. To evaluate it otherwise: python -m gradalign_fast "
                             f"eval --checkpoint {out}/checkpoint.pt --attacks ... --out FILE; "
                             f"to train anew, choose another output directory")
        if not cfg.resume:
            found = [f for f in RUN_FILES if (out / f).exists()]
            # rank 0's view, taken before it writes config.json, decides for every process
            if distributed.broadcast_flag(bool(found), self.info, self.device):
                raise ValueError(f"{out} already holds a run ({', '.join(found)}): resume it "
                                 f"(--resume) or choose another output directory")
            return None
        saved = checkpoint.read(self.ckpt_path)
        checkpoint.check_same_run(saved["config"], self.config, self.ckpt_path)
        return saved

    # ------------------------------------------------------------------ pieces
    def _measure(self, row: dict) -> bool:
        """Monitor row (rank 0): measured, logged, best.pt kept; returns 'stop on CO'."""
        stop = False
        if self.info.is_main:
            if self.method is not None:  # its fields about the steps since the last row
                row.update(self.method.pop_log())
            row.update(self.monitor.measure(self.net))
            self.monitor.update(row)
            self.log.append(row)
            if row["best"]:
                checkpoint.save(self.out / "best.pt", {
                    "config": self.config, "model": self.net.state_dict(),
                    "epoch": row["epoch"], "iteration": self.it, "pgd_acc": row["pgd_acc"]})
            stop = self.cfg.stop_on_co and row["co"]
        return distributed.broadcast_flag(stop, self.info, self.device)

    def _save(self, epoch: int) -> None:
        if not self.info.is_main:
            return
        checkpoint.save(self.ckpt_path, {
            "config": self.config, "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": epoch, "iteration": self.it, "rng": checkpoint.rng_state(self.gen),
            "monitor": self.monitor.state_dict(), "train_time_s": self.train_time,
            "method": self.method.state_dict() if self.method is not None else {}})

    def _snapshot(self, epoch: float, eps: float) -> None:
        """The weights at this iteration, for gradient-fidelity measurements along the run."""
        if self.info.is_main:
            (self.out / "snapshots").mkdir(exist_ok=True)
            checkpoint.save(self.out / "snapshots" / f"it{self.it:06d}.pt", {
                "config": self.config, "model": self.net.state_dict(),
                "iteration": self.it, "epoch": epoch, "eps": eps})

    def _diverged(self, value: float, epoch: int) -> TrainingDiverged:
        kept = (f"the last good checkpoint (epoch {epoch}) is kept at {self.ckpt_path}"
                if epoch > 0 else "no checkpoint had been written yet")
        return TrainingDiverged(
            f"the training loss became {value} in epoch {epoch + 1} (iteration {self.it}): "
            f"training diverged; {kept}. Try a lower lr_max, a longer eps warm-up, or no amp.")

    def _epoch(self, epoch: int) -> tuple[dict, bool]:
        cfg = self.cfg
        steps = len(self.loader)
        warmup = round(cfg.eps_warmup_epochs * steps)
        alpha_warmup = round(recipe.alpha_warmup_epochs(cfg.recipe, cfg.method, cfg.epochs)
                             * steps)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        n, stop, eps_now, method = 0, False, None, None
        t0 = time.perf_counter()
        # counted by hand: an iterating tqdm keeps its count to itself until it closes, so
        # its last drawn state is a step or two short of the epoch
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and self.info.is_main))
        for i, (x, y) in enumerate(self.loader):
            bar.update()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            lr = recipe.lr_at(self.it, steps, cfg.epochs, cfg.lr_max, cfg.lr_schedule)
            for group in self.opt.param_groups:
                group["lr"] = lr
            if recipe.eps_at(self.it, warmup, cfg.eps) != eps_now:
                eps_now = recipe.eps_at(self.it, warmup, cfg.eps)
                if self.method is None:  # made once, at the first step; its state carries on
                    self.method = make_method(cfg.method, eps_now, **_method_kwargs(cfg))
                    if self._method_state:
                        self.method.load_state_dict(self._method_state)
                else:
                    self.method.set_eps(eps_now)
            method = self.method
            if alpha_warmup:
                method.set_step_scale(recipe.eps_at(self.it, alpha_warmup, 1.0))
            out = train_step(method, self.model, self.opt, x, y, self.amp_dtype, self.scaler)
            sums += torch.stack([out["loss"].double() * len(y), out["reg"].double() * len(y),
                                 out["correct"].double()])
            n += len(y)
            self.it += 1
            if cfg.snapshot_every and self.it % cfg.snapshot_every == 0:
                self._snapshot(epoch + (i + 1) / steps, eps_now)
            if self.it % CHECK_EVERY == 0 or i == steps - 1:
                loss, reg, acc = (sums / n).tolist()
                if not math.isfinite(loss + reg):
                    raise self._diverged(loss + reg, epoch)
                bar.set_postfix(loss=f"{loss:.3f}", reg=f"{reg:.3f}", acc=f"{acc:.3f}")
            if cfg.monitor_every and self.it % cfg.monitor_every == 0 and i < steps - 1:
                t_mon = time.perf_counter()
                stop = self._measure({"kind": "iter", "epoch": epoch + (i + 1) / steps,
                                      "iteration": self.it, "lr": lr, "eps": eps_now})
                t0 += time.perf_counter() - t_mon  # monitoring is not training time
                if stop:
                    break
        bar.refresh()  # the last step's count (tqdm redraws at most every 0.1 s)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        epoch_time = time.perf_counter() - t0
        loss, reg, acc = (sums / max(n, 1)).tolist()
        if not math.isfinite(loss + reg):
            raise self._diverged(loss + reg, epoch)
        return {"kind": "epoch", "epoch": epoch + 1, "iteration": self.it, "lr": lr,
                "eps": eps_now, "train_loss": loss, "train_reg": reg, "train_acc": acc,
                "epoch_time_s": epoch_time}, stop

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self._setup()
        cfg, epochs_done, stopped = self.cfg, self.start_epoch, False
        for epoch in range(self.start_epoch, cfg.epochs):
            row, stopped = self._epoch(epoch)
            self.train_time += row["epoch_time_s"]
            stopped = self._measure(row) or stopped
            if cfg.progress and self.info.is_main:
                tqdm.write(epoch_line(row, cfg.epochs))
            epochs_done = epoch + 1
            self._save(epochs_done)
            if stopped:
                break
        if not self.info.is_main:
            return {}
        return self._finish(epochs_done, stopped)

    def _eps_max(self) -> float:
        """The largest eps trained at: the ramp's value at the last iteration done."""
        warmup = round(self.cfg.eps_warmup_epochs * len(self.loader))
        return recipe.eps_at(max(self.it - 1, 0), warmup, self.cfg.eps)

    def _finish(self, epochs_done: int, stopped: bool) -> dict:
        cfg = self.cfg
        res = evaluation.evaluate(self.net, self.test_set, cfg.eps, cfg.eval_attacks,
                                  cfg.n_eval, device=self.device, seed=cfg.seed,
                                  progress=cfg.progress)
        co = self.monitor.co_event
        eps_max = self._eps_max()
        final = {
            "method": cfg.method, "model": cfg.model, "eps": cfg.eps,
            "dataset": "user data" if self.config.get("user_data") else cfg.dataset,
            "eps_255": cfg.eps * 255, "eps_max_trained": eps_max,
            "eps_max_trained_255": eps_max * 255, "lam": cfg.lam, "seed": cfg.seed,
            "epochs_done": epochs_done, "iterations": self.it,
            "accuracy": {s.name: res[s.name] for s in evaluation.parse_attacks(cfg.eval_attacks)},
            "n_eval": res["n"], "eval_points": res["points"],
            "attack_configs": res["attack_configs"], "masking": res["masking"],
            "gradient_masking": any(m["flag"] for m in res["masking"]),
            "train_time_s": self.train_time, "eval_time_s": res["time_s"],
            "co": co is not None, "co_epoch": co["epoch"] if co else None,
            "stopped_on_co": stopped, "best_monitor_pgd_acc": self.monitor.best_pgd,
            "last_monitor": self.log.read()[-1], "out_dir": str(self.out),
        }
        write_json(self.out / "final.json", final)
        return final
