"""Resumable checkpoints, written so that a kill at any instant leaves a loadable latest one.

Layout: <run>/checkpoints/step-N/{model.safetensors, optimizer.pt, extra.pt, trainer_state.json, checksums.json}
and <run>/checkpoints/latest, a one-line pointer ("step-N"). A checkpoint directory is built
under a temporary name, fsynced and renamed into place (`fileio.atomic_dir`); only then is
`latest` replaced (atomic rename too). A kill mid-save therefore leaves `latest` naming the
previous, complete checkpoint. Only our own files are read back, and `torch.load` always runs
with `weights_only=True` (tensors and plain containers, no arbitrary unpickling).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from stentor.errors import StentorError
from stentor.fileio import DamagedFile, atomic_dir, atomic_write_text, read_json, read_text, verify_checksums, write_checksums

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FILES = ("model.safetensors", "optimizer.pt", "extra.pt", "trainer_state.json")
CHECKSUMS = "checksums.json"  # SHA-256 of FILES, verified before a resume reads any of them
# Test hook: seconds to sleep inside a save, after the files are written and before the rename.
SAVE_SLEEP_ENV = "STENTOR_TEST_SAVE_SLEEP"


@dataclass
class TrainerState:
    """Everything besides tensors that a resume needs; the data position is (epoch, micro_in_epoch)."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included: their data was consumed)
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches this rank consumed in `epoch`
    tokens_seen: int = 0
    skipped_steps: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    log_loss_sum: float = 0.0  # the open logging window, so the next logged train_loss is exact
    log_loss_count: int = 0
    world_size: int = 1
    finished: bool = False
    train_seconds: float = 0.0  # wall time in the training loop, over every resume (for the model card)
    device: str = ""  # what the last session trained on, e.g. "cpu" or "Tesla T4"


def rng_state() -> dict[str, Any]:
    """This process's RNG states in weights_only-loadable form (numpy's key array as a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rng_states: list[dict],
    save_total_limit: int,
) -> Path:
    """Write checkpoint step-N atomically, point `latest` at it, drop the oldest beyond the limit."""
    final = checkpoint_dir(run_dir, state.step)
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied lm_head/embedding weight
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        extra = {
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_states,
        }
        torch.save(extra, tmp / "extra.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
        write_checksums(tmp, FILES, CHECKSUMS)
        if os.environ.get(SAVE_SLEEP_ENV):
            time.sleep(float(os.environ[SAVE_SLEEP_ENV]))
    atomic_write_text(final.parent / LATEST, final.name + "\n")
    _rotate(final.parent, save_total_limit, keep=final.name)
    return final


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def _rotate(ckpt_root: Path, limit: int, keep: str) -> None:
    done = sorted((p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()), key=_step_of)
    for old in done[:-limit]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def clean_partial_saves(run_dir: Path) -> None:
    """Remove temporary directories a killed save left behind (never a completed checkpoint)."""
    for tmp in (Path(run_dir) / CHECKPOINTS).glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    name = read_text(pointer, fix="write the name of a complete checkpoint (step-N) into it").strip()
    if not name.startswith("step-") or not name[5:].isdigit():
        raise StentorError(f"{pointer} is damaged: it should name a checkpoint (step-N), not {name[:40]!r}")
    path = pointer.parent / name
    if not (path / "trainer_state.json").is_file():
        raise StentorError(f"{pointer} names {path.name}, which is missing or incomplete; the run directory was modified")
    return path


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rank: int,
    world: int = 1,
) -> TrainerState:
    """Restore model, optimizer, scheduler, scaler and this rank's RNG from `path`; return the trainer state.

    Every file is checked against the checksums written with it first, so a damaged checkpoint is
    refused before anything in the run changes (a flipped byte in a moment of the optimizer would
    otherwise resume a different run without a word)."""
    fix = f"resume from an earlier checkpoint: write its name (step-N) into {path.parent / LATEST}"
    try:
        verify_checksums(path, FILES, CHECKSUMS)
    except DamagedFile as exc:
        raise StentorError(f"{exc}; {fix}") from None
    try:
        state = TrainerState(**read_json(path / "trainer_state.json", fix=fix))
        if state.world_size != world:  # before any rank reads an RNG state that is not there
            raise StentorError(f"{path} was written by {state.world_size} process(es), this run has {world}; resume "
                               f"with the same number (accelerate launch --num_processes {state.world_size})")  # fmt: skip
        load_model(model, str(path / "model.safetensors"))
        device = next(model.parameters()).device
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
        extra = torch.load(path / "extra.pt", map_location="cpu", weights_only=True)
        scheduler.load_state_dict(extra["scheduler"])
        if scaler is not None and extra["scaler"] is not None:
            scaler.load_state_dict(extra["scaler"])
        set_rng_state(extra["rng"][rank])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, EOFError, pickle.UnpicklingError,
            SafetensorError) as exc:  # a checkpoint from before checksums, damaged: what its reader says  # fmt: skip
        raise StentorError(f"cannot resume from {path}: {type(exc).__name__}: {str(exc)[:120]}; {fix}") from None
    return state
