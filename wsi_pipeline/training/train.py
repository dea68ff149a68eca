"""Training a patch classifier: the usual PCam recipe, resumable, written as a model folder.

Recipe: ImageNet-pretrained weights when they can be had (timm), ImageNet normalisation (the card's
mean/std, applied exactly as :meth:`Model.predict` does), flips/90° rotations, colour and H&E stain jitter,
AdamW with a one-cycle schedule, gradient accumulation, float16 autocast with gradient scaling on CUDA
(disabled, same code, on the CPU), early stopping on validation ROC AUC (ties broken by the validation loss).
Two classes train one logit with binary cross-entropy (card output ``sigmoid``); more train a logit per class
with cross-entropy (``softmax``).

Reproducibility: every random draw of epoch *e* (shuffling, augmentation, dropout) comes from generators
seeded with (seed, e) at the start of the epoch, so the random state at an epoch boundary is a function of the
seed and the epoch number, and a run resumed from its checkpoint continues exactly as if it had never
stopped."""

from __future__ import annotations

import math
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import timm
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from wsi_pipeline.core.errors import InputError
from wsi_pipeline.core.files import write_atomically
from wsi_pipeline.core.progress import Progress
from wsi_pipeline.core.version import __version__
from wsi_pipeline.datasets.patches import PatchDataset
from wsi_pipeline.evaluation.patches import index_batches, patch_metrics, read_batches
from wsi_pipeline.evaluation.plots import plot_learning_curves, plot_roc
from wsi_pipeline.model.architectures import build_module
from wsi_pipeline.model.card import PCAM_MPP, ModelCard
from wsi_pipeline.model.device import inference_context
from wsi_pipeline.model.predict import normalisation, probabilities
from wsi_pipeline.model.weights import save_model
from wsi_pipeline.training.augment import augment
from wsi_pipeline.training.config import AugmentConfig, TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
HUB_TIMEOUT_S = 3.0  # how long to wait for the model hub before training without pretrained weights


def epoch_generators(
    seed: int, epoch: int, device: torch.device
) -> tuple[np.random.Generator, torch.Generator]:
    """Shuffling (numpy) and augmentation (torch, on ``device``) generators of one epoch; also seeds torch's
    global generator (dropout)."""
    global_seed, augment_seed = np.random.SeedSequence([seed, epoch]).generate_state(2)
    torch.manual_seed(int(global_seed))
    return np.random.default_rng([seed, epoch]), torch.Generator(device).manual_seed(int(augment_seed))


class InputNormaliser:
    """uint8 NHWC patches → the network's normalised NCHW (channels_last) input, as :meth:`Model.predict`
    computes it: ``x · 1/(255 std) − mean/std``."""

    def __init__(self, card: ModelCard, device: torch.device) -> None:
        self.scale, self.shift = (torch.from_numpy(value).to(device) for value in normalisation(card))
        self.device = device

    def __call__(
        self,
        patches: np.ndarray,
        config: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        x = torch.from_numpy(patches).to(self.device, non_blocking=True).float()
        if config is not None:
            x = augment(x.permute(0, 3, 1, 2).div_(255), config, generator).permute(0, 2, 3, 1).mul_(255)
        x = x.mul_(self.scale).add_(self.shift)
        return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def loss_of(logits: torch.Tensor, labels: torch.Tensor, output: str) -> torch.Tensor:
    """Mean binary cross-entropy of the one logit (sigmoid) or cross-entropy over classes (softmax)."""
    if output == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return F.cross_entropy(logits, labels)


def hub_weights_source(architecture: str) -> tuple[dict | None, str]:
    """Where timm's default ImageNet weights for ``architecture`` can come from, without waiting on a
    network that is not there: ``({"file": path}, note)`` from the local Hugging Face cache, ``({}, note)``
    when the hub answers within ``HUB_TIMEOUT_S``, else ``(None, why not)``."""
    import huggingface_hub

    pretrained_cfg = timm.models.get_pretrained_cfg(architecture)
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if not hub_id:
        return None, f"timm has no pretrained weights on the hub for {architecture}"
    cached = huggingface_hub.try_to_load_from_cache(hub_id, "model.safetensors")
    if isinstance(cached, str):
        return {"file": cached}, f"ImageNet weights {hub_id} (local cache)"
    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        return None, f"{hub_id} could not be fetched: {endpoint.hostname} unreachable ({error})"
    return {}, f"ImageNet weights {hub_id}"


def initial_module(card: ModelCard, pretrained: bool) -> tuple[torch.nn.Module, bool, str]:
    """The module to start from, whether it holds pretrained weights, and a note saying which and why."""
    if not pretrained:
        return (
            build_module(card),
            False,
            "trained from random initialisation (pretrained weights not asked for)",
        )
    if card.architecture == "compact_cnn":
        return build_module(card), False, "compact_cnn has no pretrained weights; random initialisation"
    overlay, note = hub_weights_source(card.architecture)
    if overlay is not None:
        try:
            module = timm.create_model(
                card.architecture,
                pretrained=True,
                num_classes=card.n_outputs,
                pretrained_cfg_overlay=overlay,
                **card.architecture_args,
            )
            return module, True, note
        except Exception as error:  # network, hub or file trouble of any kind: train from scratch, say why
            note = f"{note} failed to load ({type(error).__name__}: {error})"
    return build_module(card), False, f"{note}; random initialisation"


def _comparable(description: dict) -> dict:
    """A dataset's description without its paths (a moved dataset is the same dataset)."""
    return {key: value for key, value in description.items() if key != "paths"}


def _subset(n: int, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """All of range(n) shuffled, or ``limit`` of them."""
    return rng.permutation(n)[:limit]


def _card(config: TrainConfig, data: PatchDataset, name: str, mpp: float) -> ModelCard:
    """The card of the model being trained (training details are added at the end)."""
    card = ModelCard(
        name=name,
        architecture=config.architecture,
        class_names=list(data.class_names),
        output="sigmoid" if len(data.class_names) == 2 else "softmax",
        patch_size=int(data.patch_shape[0]),
        mpp=mpp,
        architecture_args=dict(config.architecture_args),
    )
    card.validate()
    return card


class _Run:
    """A training run on a device: the module and its optimiser, schedule and gradient scaler, the history
    and the best epoch so far; all of it is in the checkpoint."""

    def __init__(
        self,
        config: TrainConfig,
        card: ModelCard,
        module: torch.nn.Module,
        n_train: int,
        device: torch.device,
        header: dict,
    ) -> None:
        self.config, self.card, self.device, self.header = config, card, device, header
        self.module = module.to(device, memory_format=torch.channels_last)
        self.normalise = InputNormaliser(card, device)
        steps_per_epoch = math.ceil(math.ceil(n_train / config.batch_size) / config.accumulate)
        self.optimizer = torch.optim.AdamW(
            module.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        self.history: list[dict] = []
        self.best: dict = {}  # epoch, val metrics, weights (CPU tensors), val probabilities (tensor)

    def save(self, path: Path) -> None:
        state = {
            **self.header,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
        }
        # a run killed while saving keeps its previous checkpoint
        write_atomically(path, lambda partial: torch.save(state, partial))

    def restore(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history, self.best = state["history"], state["best"]
        self.header["commands"] = [*state["commands"], *self.header["commands"]]

    def finished(self) -> bool:
        """All epochs run, or ``patience`` epochs in a row without a better validation AUC."""
        stale = len(self.history) - self.best.get("epoch", 0)
        return len(self.history) >= self.config.epochs or (
            bool(self.history) and stale >= self.config.patience
        )

    def train_epoch(
        self,
        data: PatchDataset,
        batches: list[np.ndarray],
        generator: torch.Generator,
        progress: Progress | None,
    ) -> float:
        """One pass over ``batches``, one optimiser step per ``accumulate`` batches; the mean loss."""
        self.module.train()
        accumulate, device = self.config.accumulate, self.device
        total_loss, total_n = 0.0, 0
        for i, (patches, labels) in enumerate(read_batches(data, batches)):
            group_start = i - i % accumulate
            group_size = min(accumulate, len(batches) - group_start)
            x = self.normalise(patches, self.config.augment, generator)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = self.module(x)
            loss = loss_of(logits.float(), torch.from_numpy(labels).to(device), self.card.output)
            self.scaler.scale(loss / group_size).backward()
            if i + 1 == group_start + group_size:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            total_n += len(labels)
            if progress is not None:
                progress.update(len(labels))
        return total_loss / total_n

    def epoch(
        self,
        train_data: PatchDataset,
        n_train: int,
        val_data: PatchDataset,
        val_indices: np.ndarray,
        show_progress: bool,
    ) -> dict:
        """Train on ``n_train`` patches drawn afresh, validate, record the epoch in the history (returned)
        and keep its weights if it is the best so far: a higher validation AUC, or the same AUC (a plateau,
        e.g. at 1) with a lower validation loss."""
        epoch = len(self.history) + 1
        started = time.monotonic()
        shuffle_rng, augment_rng = epoch_generators(self.config.seed, epoch, self.device)
        batches = index_batches(_subset(len(train_data), n_train, shuffle_rng), self.config.batch_size)
        progress = Progress(n_train, f"epoch {epoch}/{self.config.epochs}") if show_progress else None
        train_loss = self.train_epoch(train_data, batches, augment_rng, progress)
        if progress is not None:
            progress.close()
        train_seconds = time.monotonic() - started
        val_loss, val_probs = self.validate(val_data, val_indices)
        val = patch_metrics(val_data.labels[val_indices], val_probs, self.card.class_names)
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val": val,
            "lr_end": self.scheduler.get_last_lr()[0],
            "seconds": time.monotonic() - started,
            "train_patches_per_s": n_train / train_seconds,
        }
        self.history.append(entry)
        if not self.best or (val["auc"], -val_loss) > (self.best["val"]["auc"], -self.best["val_loss"]):
            self.best = {
                "epoch": epoch,
                "val": val,
                "val_loss": val_loss,
                "weights": {
                    key: value.detach().cpu().clone() for key, value in self.module.state_dict().items()
                },
                # a tensor, not numpy: the checkpoint is read with weights_only=True
                "probs": torch.from_numpy(val_probs),
            }
        return entry

    def validate(self, data: PatchDataset, indices: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss and class probabilities (N, classes) over ``indices`` (sorted), in order."""
        self.module.eval()
        probs, total_loss = [], 0.0
        for patches, labels in read_batches(data, index_batches(indices, self.config.batch_size)):
            with inference_context(self.device.type):
                logits = self.module(self.normalise(patches)).float()
            loss = loss_of(logits, torch.from_numpy(labels).to(self.device), self.card.output)
            total_loss += float(loss) * len(labels)
            probs.append(probabilities(logits.cpu().numpy(), self.card.output))
        return total_loss / len(indices), np.concatenate(probs)


def _load_checkpoint(path: Path) -> dict:
    """A checkpoint, read as tensors and plain data only (``weights_only``: nothing else is unpickled)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects weights_only refuses
        raise InputError(path, f"cannot be read as a checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"is not a wsi-train checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _first_module(
    card: ModelCard, config: TrainConfig, state: dict | None
) -> tuple[torch.nn.Module, bool, str]:
    """The seeded module a run starts from (its weights come from ``state`` when resuming), whether they are
    pretrained, and why (or why not)."""
    torch.manual_seed(config.seed)
    try:
        if state is not None:
            return build_module(card), state["pretrained"], state["pretrained_note"]
        module, pretrained, note = initial_module(card, config.pretrained)
    except TypeError as error:  # architecture arguments the constructor does not take
        raise ValueError(
            f"architecture arguments {card.architecture_args} do not fit {card.architecture}: {error}"
        ) from None
    if config.pretrained and not pretrained:
        print(f"note: {note}", file=sys.stderr)
    return module, pretrained, note


def _check_resumable(state: dict, header: dict, path: Path) -> None:
    """The checkpoint was written by the same recipe on the same data."""
    if changed := [key for key, value in header["recipe"].items() if state["recipe"].get(key) != value]:
        raise InputError(
            path, f"was written with other settings ({', '.join(changed)}); resume with the same"
        )
    for split in ("train", "val"):
        if _comparable(state["data"][split]) != _comparable(header["data"][split]):
            raise InputError(path, f"was written for other {split} data")


def train(
    config: TrainConfig,
    train_data: PatchDataset,
    val_data: PatchDataset,
    out: str | Path,
    *,
    name: str | None = None,
    note: str = "",
    mpp: float = PCAM_MPP,
    device: torch.device | None = None,
    command: str = "",
    resume: bool = False,
    stop_after: int | None = None,
    show_progress: bool = True,
) -> Path:
    """Train, keeping the weights of the best validation AUC, and write the model folder ``out`` with
    ``learning_curves.png``, ``roc.png`` and the checkpoint it can be resumed from (``resume=True``).

    ``stop_after`` ends this call after that many epochs (the folder then holds the best model so far and
    ``training.finished`` is false); ``command`` is recorded in the card.
    """
    config.validate()
    device = device or torch.device("cpu")
    out = Path(out)
    checkpoint_path = out / CHECKPOINT_NAME
    if resume and not checkpoint_path.is_file():
        raise InputError(checkpoint_path, "no checkpoint to resume from")
    if not resume and out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty (use --resume to continue its run)")
    if list(train_data.class_names) != list(val_data.class_names):
        problem = f"classes {val_data.class_names} differ from the training data's {train_data.class_names}"
        raise InputError(val_data.paths[0], problem)
    val_indices = np.sort(
        _subset(len(val_data), config.max_val_samples, np.random.default_rng([config.seed]))
    )
    val_labels = val_data.labels[val_indices]
    if len(np.unique(val_labels)) < len(val_data.class_names):
        raise InputError(val_data.paths[0], "validation data lack a class; validation AUC would be undefined")
    card = _card(config, train_data, name or out.name, mpp)

    state = _load_checkpoint(checkpoint_path) if resume else None
    module, pretrained, pretrained_note = _first_module(card, config, state)
    header = {
        "format": CHECKPOINT_FORMAT,
        "recipe": asdict(config),
        "data": {"train": train_data.describe(), "val": val_data.describe()},
        "pretrained": pretrained,
        "pretrained_note": pretrained_note,
        "commands": [command],
    }
    n_train = min(len(train_data), config.max_train_samples or len(train_data))
    run = _Run(config, card, module, n_train, device, header)
    if state is not None:
        _check_resumable(state, header, checkpoint_path)
        run.restore(state)
    out.mkdir(parents=True, exist_ok=True)

    for _ in range(stop_after or config.epochs):
        if run.finished():
            break
        entry = run.epoch(train_data, n_train, val_data, val_indices, show_progress)
        run.save(checkpoint_path)
        if show_progress:
            print(
                f"epoch {entry['epoch']}/{config.epochs}: train loss {entry['train_loss']:.4f}, "
                f"val loss {entry['val_loss']:.4f}, val AUC {entry['val']['auc']:.4f}, "
                f"accuracy {entry['val']['accuracy']:.4f}, {entry['train_patches_per_s']:.0f} patches/s"
                + (" (best)" if run.best["epoch"] == entry["epoch"] else ""),
                file=sys.stderr,
            )
    return _write_outputs(out, run, val_labels, note)


def _write_outputs(out: Path, run: _Run, val_labels: np.ndarray, note: str) -> Path:
    """The model folder: the best epoch's weights, the card (its description starting with ``note``),
    learning curves and validation ROC."""
    card, header, best = run.card, run.header, run.best
    trained_on = header["data"]["train"]
    card.description = (note + " " if note else "") + (
        f"{card.architecture} trained with wsi-train on {trained_on['n']} {trained_on['format']} patches; "
        f"best validation AUC {best['val']['auc']:.4f} at epoch {best['epoch']}."
    )
    card.training = {
        "command": header["commands"][0],
        "resumed_with": header["commands"][1:],
        "data": header["data"],
        "recipe": header["recipe"],
        "pretrained": header["pretrained"],
        "pretrained_note": header["pretrained_note"],
        "epochs_run": len(run.history),
        "best_epoch": best["epoch"],
        "finished": run.finished(),
        "stopped_early": run.finished() and len(run.history) < run.config.epochs,
        "device": str(run.device),
        "seconds": sum(entry["seconds"] for entry in run.history),
        "history": run.history,
        "versions": {"wsi_pipeline": __version__, "torch": torch.__version__},
    }
    card.metrics = {"validation": best["val"]}
    run.module.load_state_dict(best["weights"])
    save_model(out, run.module, card)
    plot_learning_curves(run.history, best["epoch"], out / "learning_curves.png")
    plot_roc(val_labels, best["probs"].numpy(), card.class_names, out / "roc.png")
    return out
