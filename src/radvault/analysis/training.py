"""Training: the paper's recipe, every "deep learning optimisation" switchable.

Defaults follow the paper (section 3.4): Adam, learning rate 0.001, batch 32,
dropout 0.30, softmax with categorical cross-entropy, 224 x 224 x 3 input
(``size`` is a parameter: 128 or less is far cheaper on a CPU). On top of
that, the optimisations the paper's ablation removes, each one a switch in
:class:`Optimisation`:

* ``augment``: light augmentation suited to medical images, done with torch
  ops on whole batches: rotation up to 10 degrees, shifts up to 6 %, scale
  0.9-1.1, left-right flips only where the task allows them (never for chest
  radiographs), brightness/contrast jitter of 10 %;
* ``balance``: class-balanced sampling (``"sampler"``), class-weighted loss
  (``"weights"``) or neither (``"none"``);
* ``schedule``: cosine learning-rate decay over the epochs, or a constant rate;
* ``early_stopping``: keep the epoch with the best validation macro AUC and
  stop after ``patience`` epochs without improvement; off, the last epoch is kept;
* ``calibration``: temperature scaling on the validation split.

Seeds are fixed (Python, numpy, torch; one torch generator drives sampling and
augmentation and is saved in the checkpoint), a checkpoint is written after
every epoch and ``resume=True`` continues from it, and a rich progress bar shows
the loss and the validation metrics of each epoch.

After training, the best weights are exported to ONNX and the final
calibration and metrics are computed **with ONNX Runtime on the exported
file**, so the model card reports exactly what service will do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from radvault.analysis.calibration import fit_temperature, softmax
from radvault.analysis.datasets import PreparedSplit
from radvault.analysis.export import (
    Signer,
    cam_spec,
    input_spec,
    onnx_bytes_from_torch,
    write_model,
)
from radvault.analysis.inference import onnx_logits
from radvault.analysis.metrics import compute_metrics, held_out_metrics
from radvault.analysis.networks import MIN_INPUT_SIZE, NETWORKS, build_network
from radvault.config import PreprocessSettings
from radvault.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from radvault.analysis.tasks import Task

__all__ = ["DataSource", "Optimisation", "TrainConfig", "TrainResult", "augment_batch",
           "load_backbone", "train"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"


class DataSource(Protocol):
    """What training reads: :class:`~radvault.analysis.datasets.ManifestSource` or
    :class:`~radvault.analysis.datasets.MedMNISTSource`."""

    task: Task

    @property
    def sha256(self) -> str:
        """Digest of the data's manifest or file."""
        ...

    @property
    def splits(self) -> tuple[str, ...]:
        """Available split names."""
        ...

    def load(self, split: str, settings: PreprocessSettings, *,
             cache_dir: str | PathLike[str] | None = None,
             progress: Any = None) -> PreparedSplit:
        """Preprocess one split."""
        ...

    def groups(self, split: str) -> list[str]:
        """Each image's group (patient, slice series) of one split, in ``load`` order."""
        ...


@dataclass(frozen=True)
class Optimisation:
    """The "deep learning optimisation" switches (all on by default).

    Raises
    ------
    ModelError
        If ``balance`` or ``schedule`` is unknown or ``patience`` < 1.
    """

    augment: bool = True
    balance: str = "sampler"
    schedule: str = "cosine"
    early_stopping: bool = True
    patience: int = 8
    calibration: bool = True

    def __post_init__(self) -> None:
        if self.balance not in ("sampler", "weights", "none"):
            raise ModelError("balance must be 'sampler', 'weights' or 'none'")
        if self.schedule not in ("cosine", "none"):
            raise ModelError("schedule must be 'cosine' or 'none'")
        if self.patience < 1:
            raise ModelError("patience must be at least 1")

    @classmethod
    def off(cls) -> Optimisation:
        """Every optimisation switched off (the ablation's "without DL optimisation")."""
        return cls(augment=False, balance="none", schedule="none", early_stopping=False,
                   calibration=False)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs.

    Parameters
    ----------
    source : DataSource
        Where the images come from (manifest + task, or MedMNIST).
    out_dir : path
        The model folder to write (``model.onnx``, ``model_card.json``, ``signature.json``).
    network : str
        ``resnet18``, ``densenet121`` or ``efficientnet-b0``.
    width : float
        ResNet channel multiplier (1.0 = standard ResNet-18); the other networks
        have fixed channel counts and refuse any other value than 1.0 (the card
        would record a width the network does not have).
    stem : str
        ResNet stem: ``imagenet`` (7x7 stride 2 + max-pool) or ``small``
        (3x3 stride 1, for 28-pixel MedMNIST images).
    preprocess : PreprocessSettings
        The imaging layer's settings; ``size`` is the network input size.
    epochs, batch_size, lr, dropout, weight_decay, seed
        The usual; paper defaults. ``epochs`` and ``batch_size`` are at least 1,
        ``lr`` is positive, ``dropout`` within [0, 1), ``weight_decay`` at least 0.
    optimisation : Optimisation
    train_split, val_split, test_split : str
        Split names; ``test_split=""`` skips the test evaluation.
    checkpoint_dir : path, optional
        Where ``checkpoint.pt`` and ``history.json`` go (default the sibling folder
        ``<out_dir>.checkpoint``: outside the model folder, so that copying a model
        never copies its checkpoint, 108 MB for DenseNet-121).
    cache_dir : path, optional
        Cache of preprocessed public images (never for vault data).
    resume : bool
        Continue from the checkpoint if there is one.
    finish_now : bool
        With ``resume``: train no further epoch, export the best epoch so far
        (for a run that must stop before its epoch budget).
    threads : int, optional
        ``torch.set_num_threads`` (at least 1; ``None``: PyTorch's default).
    fp16_weights : bool
        Store the ONNX weights as float16 (metrics are computed on that file).
    init_from : path, optional
        Start from the best weights of another run's ``checkpoint.pt`` (same
        network, width and stem; any classes): transfer learning from a model
        trained on more data. The linear layer starts fresh.
    device : str
        Where the network trains: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``
        (CUDA when PyTorch sees a GPU, else the CPU). Export, calibration and
        every reported metric run on the CPU with ONNX Runtime either way. A
        seed gives the same run again on the CPU; on a GPU, cuDNN's kernels
        are not bitwise deterministic, so a repeated run differs slightly.
    also_preprocess : tuple of PreprocessSettings
        Further preprocessings of the same size: every split is also preprocessed with
        each, and the copies join it (training, early stopping, calibration and the
        reported metrics). For a model that reads inputs made by other models'
        preprocessing, such as the image check; the card records them.

    Raises
    ------
    ModelError
        If a value is out of range.
    """

    source: DataSource
    out_dir: Path
    network: str = "resnet18"
    width: float = 1.0
    stem: str = "imagenet"
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.30
    weight_decay: float = 0.0
    seed: int = 0
    optimisation: Optimisation = field(default_factory=Optimisation)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    checkpoint_dir: Path | None = None
    cache_dir: Path | None = None
    resume: bool = False
    finish_now: bool = False
    threads: int | None = None
    fp16_weights: bool = False
    init_from: Path | None = None
    also_preprocess: tuple[PreprocessSettings, ...] = ()
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.checkpoint_dir is not None:
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        if self.epochs < 1 or self.batch_size < 1:
            raise ModelError("epochs and batch_size must be at least 1")
        if not self.lr > 0:
            raise ModelError("learning rate must be positive")
        if not self.weight_decay >= 0:
            raise ModelError(f"weight decay must be at least 0, not {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"dropout must be within [0, 1), not {self.dropout}")
        if self.threads is not None and self.threads < 1:
            raise ModelError(f"threads must be at least 1, not {self.threads}")
        if self.network not in (*NETWORKS, "efficientnet_b0"):
            raise ModelError(f"unknown network {self.network!r}; one of {', '.join(NETWORKS)}")
        if not (math.isfinite(self.width) and 0.05 <= self.width <= 4.0):
            raise ModelError(f"width must be within 0.05..4, not {self.width}")
        if any(p.size != self.preprocess.size for p in self.also_preprocess):
            raise ModelError("also_preprocess must keep the input size "
                             f"({self.preprocess.size} px)")
        if len({self.preprocess, *self.also_preprocess}) != 1 + len(self.also_preprocess):
            raise ModelError("also_preprocess repeats a preprocessing: every image would "
                             "only be counted twice (--also-enhanced needs --no-enhance "
                             "--no-denoise)")
        if self.network != "resnet18" and self.width != 1.0:
            raise ModelError(f"width {self.width} applies to resnet18 only; {self.network} "
                             "has fixed channel counts (leave width at 1.0)")
        if self.network != "resnet18" and self.stem != "imagenet":
            raise ModelError(f"stem {self.stem!r} applies to resnet18 only")
        if self.size < MIN_INPUT_SIZE[self.network]:
            raise ModelError(f"{self.network} needs an input of at least "
                             f"{MIN_INPUT_SIZE[self.network]} px, not {self.size} "
                             "(resnet18 with --stem small suits small images)")
        if self.finish_now and not self.resume:
            raise ModelError("finish_now needs resume (it exports a checkpoint's best epoch)")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ModelError(f"device must be auto, cpu or cuda[:N], not {self.device!r}")

    @property
    def size(self) -> int:
        """Network input size (from the preprocessing settings)."""
        return self.preprocess.size

    @property
    def checkpoint_path(self) -> Path:
        """Where the resumable checkpoint lives (``<out_dir>.checkpoint/`` by default; a
        run begun by an older version, with its checkpoint in ``<out_dir>/train/``, resumes
        from there)."""
        if self.checkpoint_dir is not None:
            return self.checkpoint_dir / CHECKPOINT_FILE
        out = self.out_dir.resolve()  # "runs/m/" and "runs/m" name the same sibling
        path = out.with_name(out.name + ".checkpoint") / CHECKPOINT_FILE
        legacy = out / "train" / CHECKPOINT_FILE  # where runs before session 7 kept it
        return legacy if not path.is_file() and legacy.is_file() else path

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed."""
        from radvault.imaging.preprocess import settings_to_dict

        return {"network": self.network, "width": self.width, "stem": self.stem, "classes": list(
            self.source.task.class_names), "data_sha256": self.source.sha256,
            "preprocess": settings_to_dict(self.preprocess), "seed": self.seed,
            **({"also_preprocess": [settings_to_dict(p) for p in self.also_preprocess]}
               if self.also_preprocess else {}),
            "batch_size": self.batch_size, "lr": self.lr, "dropout": self.dropout,
            "epochs": self.epochs, "optimisation": asdict(self.optimisation),
            "init_from": None if self.init_from is None else _file_sha256(self.init_from)}


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path
    card: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    temperature: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    seconds: float


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)  # third-party code (MONAI) may use the legacy global RNG
    torch.manual_seed(seed)


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, hflip: bool,
                  max_rotate_deg: float = 10.0, max_shift: float = 0.06,
                  scale: tuple[float, float] = (0.9, 1.1), jitter: float = 0.10) -> torch.Tensor:
    """Light, anatomy-respecting augmentation of a batch ``(N, 3, S, S)`` in ``[0, 1]``.

    A random affine per image (rotation, shift, scale, optional left-right
    flip) through ``affine_grid``/``grid_sample`` with zero padding, then
    brightness and contrast jitter; values stay in ``[0, 1]``.
    """
    import torch
    from torch.nn import functional

    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-1, 1) * math.radians(max_rotate_deg)
    s = uniform(*scale)
    tx, ty = uniform(-max_shift, max_shift) * 2, uniform(-max_shift, max_shift) * 2
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip \
        else torch.ones(n)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1),
                         torch.stack([sin * flip, cos, ty], 1)], 1).to(x.device)
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # The random draws come from the CPU generator whatever the device, so a
    # seed gives the same augmentation stream on the CPU and on a GPU.
    contrast = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1).to(x.device)
    bright = uniform(-jitter / 2, jitter / 2).view(n, 1, 1, 1).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + bright).clamp_(0.0, 1.0)


def _predict_torch(model: nn.Module, images: np.ndarray, batch: int = 128,
                   device: str = "cpu") -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch].astype(np.float32)).to(device)
            out.append(model(x).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when PyTorch sees a GPU, else ``cpu``.

    Raises
    ------
    ModelError
        If the name is not a CPU or CUDA device, or names a GPU PyTorch does not see.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ModelError(f"device must be auto, cpu or cuda[:N], not {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelError(f"device {device!r} asked for, but PyTorch sees "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif parsed.type != "cpu":
        raise ModelError(f"device must be auto, cpu or cuda[:N], not {device!r}")
    return device


def _score(metrics: dict[str, Any]) -> float:
    auc = metrics.get("auc_macro")
    return float(auc) if auc is not None else float(metrics["balanced_accuracy"])


class _Reporter:
    """Rich progress bar (or plain logging) for epochs and batches."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> _Reporter:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        return self._progress.add_task(description, total=total) if self._progress else None

    def update(self, task: Any, *, advance: int = 0, description: str | None = None) -> None:
        if self._progress is not None and task is not None:
            kwargs: dict[str, Any] = {"advance": advance}
            if description is not None:
                kwargs["description"] = description
            self._progress.update(task, **kwargs)

    def counter(self, description: str) -> Any:
        """A ``progress(done, total)`` callback drawing its own bar (or ``None``)."""
        if self._progress is None:
            return None
        bar = self._progress.add_task(description, total=0)

        def tick(done: int, total: int) -> None:
            self._progress.update(bar, completed=done, total=total)

        return tick

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text)
        log.info("%s", text)


def _load_splits(config: TrainConfig, reporter: _Reporter) -> dict[str, PreparedSplit]:
    names = [config.train_split, config.val_split]
    if config.test_split and config.test_split in config.source.splits:
        names.append(config.test_split)
    out = {}
    for name in names:
        parts = [config.source.load(name, settings, cache_dir=config.cache_dir,
                                    progress=reporter.counter(f"preprocess {name}"))
                 for settings in (config.preprocess, *config.also_preprocess)]
        out[name] = parts[0] if len(parts) == 1 else PreparedSplit(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]), classes=parts[0].classes,
            modalities=[m for p in parts for m in p.modalities],
            body_parts=[b for p in parts for b in p.body_parts])
        counts = out[name].class_counts
        reporter.line(f"{name}: {len(out[name])} images, per class {counts.tolist()}")
    if (out[config.train_split].class_counts == 0).any():
        raise ModelError("a class has no training images")
    return out


def _differing(saved: Any, now: dict[str, Any]) -> str:
    """`` (differs: epochs, lr)``: which settings a checkpoint was made with otherwise."""
    try:
        then = json.loads(saved)
    except (TypeError, ValueError):
        return ""
    if not isinstance(then, dict):
        return ""
    now = json.loads(json.dumps(now, sort_keys=True))  # tuples as lists, as when saved
    keys = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    return f" (differs: {', '.join(keys)})" if keys else ""


def train(config: TrainConfig, progress: bool = True, *, signer: Signer | None = None
          ) -> TrainResult:
    """Train, calibrate, export and evaluate one model.

    Parameters
    ----------
    config : TrainConfig
    progress : bool
        Show a rich progress bar (otherwise log one line per epoch).
    signer : Signer, optional
        Signs the model folder (the vault's signer or a model signing key).

    Returns
    -------
    TrainResult

    Raises
    ------
    ModelError
        If training cannot start (empty class, bad checkpoint) or export fails.
    DatasetError
        If the data are unusable.
    """
    import torch
    from torch.nn import functional

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    opt_cfg = config.optimisation
    task = config.source.task
    classes = task.class_names
    device = resolve_device(config.device)  # before the (long) preprocessing
    with _Reporter(progress) as rep:
        data = _load_splits(config, rep)
        tr, va = data[config.train_split], data[config.val_split]
        te = data.get(config.test_split) if config.test_split else None

        _seed_everything(config.seed)
        model = build_network(config.network, len(classes), dropout=config.dropout,
                              width=config.width, stem=config.stem)
        if config.init_from is not None:
            load_backbone(model, config.init_from)
            rep.line(f"backbone initialised from {config.init_from.name}")
        model.to(device)
        if device != "cpu":
            rep.line(f"training on {device} ({torch.cuda.get_device_name(device)})")
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr,
                                     weight_decay=config.weight_decay)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs,
                                                                eta_min=config.lr * 0.01)
                     if opt_cfg.schedule == "cosine" else None)
        gen = torch.Generator().manual_seed(config.seed)
        counts = torch.as_tensor(tr.class_counts, dtype=torch.float64)
        class_w = (counts.sum() / (len(counts) * counts)).float()
        sample_w = (1.0 / counts)[torch.from_numpy(tr.labels)]
        loss_w = class_w.to(device) if opt_cfg.balance == "weights" else None

        history: list[dict[str, Any]] = []
        best_state: dict[str, torch.Tensor] | None = None
        best_score, best_epoch, bad_epochs, start_epoch = -math.inf, 0, 0, 1
        ckpt_path = config.checkpoint_path
        fingerprint = config.fingerprint()
        if config.resume and ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if ckpt.get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
                raise ModelError(f"{ckpt_path}: checkpoint is from a different configuration"
                                 f"{_differing(ckpt.get('fingerprint'), fingerprint)}")
            model.load_state_dict(ckpt["model"])
            optimiser.load_state_dict(ckpt["optimiser"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            if device != "cpu" and ckpt.get("cuda_rng") is not None:  # dropout on the GPU
                torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
            history = json.loads(ckpt["history"])
            best_state, best_score = ckpt["best_state"], float(ckpt["best_score"])
            best_epoch, bad_epochs = int(ckpt["best_epoch"]), int(ckpt["bad_epochs"])
            start_epoch = int(ckpt["epoch"]) + 1
            rep.line(f"resumed from epoch {start_epoch - 1}")

        images_t = torch.from_numpy(tr.images)
        labels_t = torch.from_numpy(tr.labels)
        n = len(tr)
        steps = math.ceil(n / config.batch_size)
        stopped = start_epoch > config.epochs or config.finish_now or (
            opt_cfg.early_stopping and bad_epochs >= opt_cfg.patience)
        epoch = start_epoch
        while not stopped and epoch <= config.epochs:
            model.train()
            if opt_cfg.balance == "sampler":
                order = torch.multinomial(sample_w, n, replacement=True, generator=gen)
            else:
                order = torch.randperm(n, generator=gen)
            bar = rep.task(f"epoch {epoch}/{config.epochs}", total=steps)
            total_loss, seen = 0.0, 0
            t0 = time.monotonic()
            for b in range(steps):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if len(idx) < 2:  # batch norm needs two samples
                    continue
                x = images_t[idx].to(device, non_blocking=True).float()
                y = labels_t[idx].to(device, non_blocking=True)
                if opt_cfg.augment:
                    x = augment_batch(x, gen, hflip=task.hflip)
                loss = functional.cross_entropy(model(x), y, weight=loss_w)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total_loss += loss.item() * len(idx)
                seen += len(idx)
                rep.update(bar, advance=1, description=(
                    f"epoch {epoch}/{config.epochs} loss {total_loss / seen:.4f}"))
            lr_now = optimiser.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            val_logits = _predict_torch(model, va.images, device=device)
            vm = compute_metrics(va.labels, softmax(val_logits), classes)
            score = _score(vm)
            improved = score > best_score
            if improved or not opt_cfg.early_stopping:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch = epoch
            if improved:
                best_score, bad_epochs = score, 0
            else:
                bad_epochs += 1
            record = {"epoch": epoch, "loss": total_loss / max(seen, 1), "lr": lr_now,
                      "val_auc": vm["auc_macro"], "val_accuracy": vm["accuracy"],
                      "val_balanced_accuracy": vm["balanced_accuracy"], "val_nll": vm["nll"],
                      "seconds": time.monotonic() - t0}
            history.append(record)
            auc_txt = "n/a" if vm["auc_macro"] is None else f"{vm['auc_macro']:.4f}"
            rep.line(f"epoch {epoch}: loss {record['loss']:.4f}  val AUC {auc_txt}  "
                     f"acc {vm['accuracy']:.4f}  bal.acc {vm['balanced_accuracy']:.4f}  "
                     f"nll {vm['nll']:.4f}{'  *' if improved else ''}  "
                     f"({record['seconds']:.0f}s)")
            stopped = opt_cfg.early_stopping and bad_epochs >= opt_cfg.patience
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
            torch.save({
                "fingerprint": json.dumps(fingerprint, sort_keys=True), "epoch": epoch,
                "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device != "cpu" else None,
                "history": json.dumps(history), "best_state": best_state,
                "best_score": best_score, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            }, tmp)
            tmp.replace(ckpt_path)
            (ckpt_path.parent / HISTORY_FILE).write_text(json.dumps(history, indent=1))
            epoch += 1
        if config.finish_now:
            rep.line(f"finishing after epoch {start_epoch - 1} of {config.epochs}; "
                     f"best epoch {best_epoch}")
        elif stopped and opt_cfg.early_stopping:
            rep.line(f"early stop; best epoch {best_epoch} (val AUC {best_score:.4f})")

    if best_state is None:
        raise ModelError("training produced no model (no epoch ran)")
    model.load_state_dict(best_state)
    model.to("cpu")
    model.eval()
    if config.fp16_weights:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    return _finish(config, model, tr, va, te, history, best_epoch, signer, started,
                   device=device)


def _finish(config: TrainConfig, model: nn.Module, tr: PreparedSplit, va: PreparedSplit,
            te: PreparedSplit | None, history: list[dict[str, Any]], best_epoch: int,
            signer: Signer | None, started: float, *, device: str = "cpu") -> TrainResult:
    """Export, calibrate and evaluate on the exported ONNX file, then write the folder."""
    import torch

    from radvault.imaging.preprocess import settings_to_dict

    task = config.source.task
    classes = task.class_names
    onnx_bytes = onnx_bytes_from_torch(model, config.size, fp16_weights=config.fp16_weights)
    val_logits = onnx_logits(onnx_bytes, va.images, config.threads)
    if config.optimisation.calibration:
        cal = fit_temperature(val_logits, va.labels)
        temperature, calibration = cal.temperature, cal.as_dict()
    else:
        temperature, calibration = 1.0, None
    val_metrics = compute_metrics(va.labels, softmax(val_logits, temperature), classes)
    test_metrics = None
    if te is not None:
        test_logits = onnx_logits(onnx_bytes, te.images, config.threads)
        test_metrics = held_out_metrics(te.labels, test_logits, classes, temperature)
    seconds = time.monotonic() - started
    card = {
        "task": task.name,
        "task_definition": task.to_dict(),
        "classes": list(classes),
        "network": {"name": config.network, "width": config.width, "dropout": config.dropout,
                    "stem": config.stem, "stem_stride": 1 if config.stem == "small" else 2,
                    "fp16_weights": config.fp16_weights},
        "input": input_spec(config.size),
        "preprocessing": settings_to_dict(config.preprocess),
        # every split (its counts and metrics here too) holds one copy per preprocessing
        **({"also_preprocessed_with": [settings_to_dict(p) for p in config.also_preprocess],
            "copies_per_image": 1 + len(config.also_preprocess)}
           if config.also_preprocess else {}),
        "training": {
            "manifest_sha256": config.source.sha256, "seed": config.seed,
            "splits": {"train": config.train_split, "val": config.val_split,
                       "test": config.test_split if te is not None else None},
            "counts": {"train": tr.class_counts.tolist(), "val": va.class_counts.tolist(),
                       "test": te.class_counts.tolist() if te is not None else None},
            "epochs": config.epochs, "epochs_run": len(history), "best_epoch": best_epoch,
            "batch_size": config.batch_size, "optimizer": "Adam", "lr": config.lr,
            "weight_decay": config.weight_decay, "loss": "cross-entropy",
            "optimisation": asdict(config.optimisation), "seconds": round(seconds, 1),
            "device": device.split(":")[0],
            # a seed repeats a CPU run only at the same thread count (summation order)
            "threads": torch.get_num_threads(),
            "init_from_sha256": (None if config.init_from is None
                                 else _file_sha256(config.init_from)),
        },
        "temperature": temperature,
        "calibration": calibration,
        "trained_on": tr.trained_on,
        "class_trained_on": tr.class_trained_on,  # serving refers a class of another modality
        "metrics": {"val": val_metrics, "test": test_metrics},
        "cam": cam_spec(model),
    }
    card = write_model(config.out_dir, onnx_bytes, card, signer)
    return TrainResult(model_dir=config.out_dir, card=card, history=history,
                       best_epoch=best_epoch, temperature=temperature, val_metrics=val_metrics,
                       test_metrics=test_metrics, seconds=seconds)


def _file_sha256(path: Path) -> str:
    """The sha-256 of a file (a checkpoint named by ``init_from``)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None


def load_backbone(model: Any, checkpoint: Path) -> None:
    """Copy every weight but the linear layer's from a training checkpoint into ``model``.

    Raises
    ------
    ModelError
        If the file is not a training checkpoint or its network differs
        (layers missing, extra or of another shape).
    """
    import pickle

    import torch

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = ckpt.get("best_state") or ckpt["model"]
    except (OSError, RuntimeError, KeyError, AttributeError, EOFError,
            pickle.UnpicklingError) as exc:
        raise ModelError(f"{checkpoint}: not a training checkpoint "
                         f"({type(exc).__name__})") from None
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    wrong = sorted(k for k in own if k not in backbone or backbone[k].shape != own[k].shape)
    extra = sorted(k for k in backbone if k not in own)
    if wrong or extra:
        raise ModelError(f"{checkpoint}: its network differs from this one "
                         f"({len(wrong)} layers missing or reshaped, {len(extra)} extra)")
    model.load_state_dict(backbone, strict=False)
