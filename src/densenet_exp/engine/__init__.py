"""The training of one rank: ``run_rank`` -> ``fit`` -> build, restore, epochs, evaluations.

Handed a plain config (nested dicts) and a run directory; knows nothing of Hydra. Rank 0 writes
every file (metrics, TensorBoard, checkpoints, predictions); all ranks train and reduce metrics.

    rank.py      run_rank / spawned_rank: set-up, fit, the summary and closing block however it ends
    loop.py      fit: the loop, top to bottom, and validate
    build.py     the components from the config (data, model, optimizer, precision, schedule)
    state.py     the training state, checkpoints and resume
    epoch.py     train_one_epoch
    evaluate.py  evaluate: loss, top-1, top-5 (and per-image predictions), exact under DDP
    guards.py    the stop signal and the non-finite-loss guard
    record.py    log lines, metrics.jsonl, TensorBoard, prediction files
    helpers.py   logging set-up, seeding, the loss, peak memory
"""

from .evaluate import evaluate
from .guards import NonFiniteLossError, TrainingInterrupted
from .helpers import loss_fn, peak_memory_mb, seed_everything, setup_logging, unwrap
from .loop import fit
from .rank import run_rank, spawned_rank

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
    "evaluate",
    "fit",
    "loss_fn",
    "peak_memory_mb",
    "run_rank",
    "seed_everything",
    "setup_logging",
    "spawned_rank",
    "unwrap",
]
