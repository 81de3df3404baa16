"""Typed schema of the config tree.

Every group of ``conf/`` merges into one of these dataclasses, so a misspelled key or enum value
fails when Hydra composes the config, before any work starts. The enums (``choices``) are the
valid choices; ``convert`` turns a composed config into these dataclasses and back.

The dataclass defaults are the default config, written once: ``Config()`` is what
``python -m densenet_exp`` trains (the default model on the embedded digits), and each option
file in ``conf/`` holds only what that option changes (a test holds the two together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from .choices import (
    ActName,
    AmpBackend,
    AmpDtype,
    Augment,
    AugmentOn,
    CacheMode,
    ConvType,
    DataName,
    DecodeOn,
    DeviceName,
    DistBackend,
    Impl,
    InitDistribution,
    InitMode,
    InitName,
    LossName,
    NormType,
    OnBadImage,
    OptimName,
    OptLevel,
    SchedName,
    Stem,
)
from .parse import parse_count, parse_loss_scale


@dataclass
class ModelConfig:
    name: str = "densenet_bc_digits"
    growth_rate: int = 12
    # layers per dense block; null when ``depth`` gives them (the paper's CIFAR presets)
    block_config: Optional[list[int]] = field(default_factory=lambda: [3, 3, 3])
    depth: Optional[int] = None  # CIFAR L: 3 blocks of (L-4)/3 layers, or (L-4)/6 with bottleneck
    num_init_features: int = 24
    bottleneck: bool = True  # "B": BN-act-1x1 conv to bn_size*k before each 3x3 conv
    bn_size: int = 4
    compression: float = 0.5  # "C" when < 1: the share of feature maps a transition keeps
    drop_rate: float = 0.0
    stem: Stem = Stem.cifar
    memory_efficient: bool = False
    # the same network and parameters either way. plain (models/densenet.py) for the default
    # small model, where fast gains nothing (O0 1.04x, O1 0.86x: README); the named presets fast
    impl: Impl = Impl.plain
    num_classes: Optional[int] = None  # null: the number of classes found in the data
    pretrained: Optional[str] = None  # a local torchvision-format state-dict file


@dataclass
class ConvConfig:
    type: ConvType = ConvType.standard
    kernel_size: int = 3
    dilation: int = 1
    inner_bn: bool = True  # BN between depthwise and pointwise (dsconv only)
    # type=custom: the class, called as cls(in_channels, out_channels, **params) by Hydra
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActConfig:
    name: ActName = ActName.relu
    prelu_init: float = 0.25
    prelu_per_channel: bool = False
    # name=custom: the class, called as cls(**params), plus num_channels=C if it takes that
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class NormConfig:
    type: NormType = NormType.batch
    # type=custom: the class, called with the channel count (as num_channels=/num_features= if
    # it takes either, e.g. torch.nn.GroupNorm, else first) and **params, by Hydra
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AmpConfig:
    opt_level: OptLevel = OptLevel.O0
    dtype: AmpDtype = AmpDtype.auto
    keep_batchnorm_fp32: Optional[bool] = None  # null: the level's default
    master_weights: Optional[bool] = None  # null: the level's default
    loss_scale: Optional[str] = None  # null: the level's default; "dynamic" or a number
    backend: AmpBackend = AmpBackend.native

    def __post_init__(self) -> None:
        parse_loss_scale(self.loss_scale)  # a bad value fails when the config is made

    @property
    def requested_loss_scale(self) -> str | float | None:
        """None (the level's default), ``"dynamic"`` or a number."""
        return parse_loss_scale(self.loss_scale)


@dataclass
class InitConfig:
    name: InitName = InitName.kaiming
    mode: InitMode = InitMode.fan_out  # kaiming only
    distribution: InitDistribution = InitDistribution.normal  # kaiming and xavier


@dataclass
class DataConfig:
    name: DataName = DataName.digits
    root: Optional[str] = None  # digits: its folder (null: ~/.cache/densenet_exp/digits)
    train_dir: str = "train"
    val_dir: str = "val"
    val_split: float = 0.2
    image_size: int = 16
    batch_size: int = 64  # per rank
    num_workers: str = "0"  # loader workers per rank: "auto" (what the rank's cores allow) or N
    pin_memory: bool = True
    persistent_workers: bool = True
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    augment: Augment = Augment.light
    cache: CacheMode = CacheMode.auto  # decode once, keep uint8 in RAM (data/cache.py)
    # data.cache=disk's folder (null: .densenet_exp_cache in the data folder, or the user's cache)
    cache_dir: Optional[str] = None
    augment_on: AugmentOn = AugmentOn.auto  # where the train augmentation runs (data/augment.py)
    decode: DecodeOn = DecodeOn.cpu  # where uncached JPEGs are decoded (data/streamed.py)
    eval_crop_ratio: float = 1.0  # eval: resize to image_size / ratio, then center-crop image_size
    shuffle: bool = True
    on_bad_image: OnBadImage = OnBadImage.skip
    split_seed: int = 0  # fixed seed of the train/val split when there is no val folder
    # data=synthetic only: random images with a class-dependent signal
    synthetic_train_size: int = 256
    synthetic_val_size: int = 64
    synthetic_classes: int = 10

    def __post_init__(self) -> None:
        parse_count(self.num_workers, "data.num_workers", 0)

    @property
    def workers(self) -> int | None:
        """Loader workers per rank; None: ``auto``, what the rank's cores allow."""
        return parse_count(self.num_workers, "data.num_workers", 0)


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd
    lr: float = 0.1
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = True  # no weight decay on norm, bias and PReLU parameters


@dataclass
class SchedConfig:
    name: SchedName = SchedName.cos
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cos/poly: final lr as a fraction of optim.lr
    power: float = 0.9  # poly
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # multistep: epochs
    gamma: float = 0.1  # step, multistep


@dataclass
class TrainerConfig:
    epochs: int = 15
    max_steps: Optional[int] = None  # stop after this many optimizer steps (null: epochs decide)
    device: DeviceName = DeviceName.auto
    seed: int = 42
    deterministic: bool = False
    channels_last: bool = False
    compile: bool = False
    grad_accum: int = 1
    grad_clip: Optional[float] = None  # max global grad norm (null: no clipping)
    loss: LossName = LossName.ce
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    ema: Optional[float] = None  # EMA decay of the weights, e.g. 0.999 (null: off)
    eval_every: int = 1  # epochs
    ckpt_every_n_steps: int = 0  # 0: only at the end of each epoch
    resume: Optional[str] = None  # null, "auto" (this run dir's last.pt) or a checkpoint path
    progress: bool = True
    log_every_n_steps: int = 50
    max_nonfinite_steps: int = 5  # stop after this many consecutive steps with a non-finite loss
    # CPU, memory_efficient: hand glibc's freed heap pages back to the OS during a step (heap.py)
    heap_trim: bool = True


@dataclass
class DistConfig:
    nproc_per_node: str = "auto"  # "auto": one rank per visible GPU, or 1 on CPU
    nnodes: int = 1
    rdzv_endpoint: str = "localhost:0"
    rdzv_id: str = "densenet_exp"
    backend: DistBackend = DistBackend.auto
    timeout_s: int = 300

    def __post_init__(self) -> None:
        parse_count(self.nproc_per_node, "dist.nproc_per_node", 1)

    @property
    def nproc(self) -> int | None:
        """Ranks per machine; None: ``auto``, one per visible GPU (one on CPU)."""
        return parse_count(self.nproc_per_node, "dist.nproc_per_node", 1)


@dataclass
class TensorBoardLogger:
    enabled: bool = True  # set by the ``logger`` group: logger=tensorboard (the default)


@dataclass
class MlflowLogger:
    enabled: bool = False  # set by the ``logger`` group: logger=mlflow, logger=[tensorboard,mlflow]
    # null: sqlite:///<the launch folder>/outputs/mlflow.db; any MLflow URI (a server: http://...)
    tracking_uri: Optional[str] = None
    # null: the sweep's folder for a sweep's jobs (one experiment per sweep), else "densenet_exp"
    experiment_name: Optional[str] = None
    log_checkpoints: bool = False  # also upload checkpoints/{last,best}.pt as artifacts


@dataclass
class LoggerConfig:
    """Where a run's metrics go besides its own folder (rank 0 only). The ``logger`` group turns
    them on: ``logger=mlflow``, ``logger=none``, ``logger=[tensorboard,mlflow]``."""

    tensorboard: TensorBoardLogger = field(default_factory=TensorBoardLogger)
    mlflow: MlflowLogger = field(default_factory=MlflowLogger)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    conv: ConvConfig = field(default_factory=ConvConfig)
    act: ActConfig = field(default_factory=ActConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    sync_bn: bool = False
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# The nodes an option file of ``conf/<group>/`` sets whole (``trainer``, ``dist`` and ``sync_bn``
# are set key by key), and the groups of presets that set several nodes and the sweep at once.
NODE_GROUPS = ("model", "conv", "act", "norm", "amp", "init", "data", "optim", "sched")
PRESET_GROUPS = ("experiment", "hparams_search")
# Groups whose options are picked several at once (``logger=[tensorboard,mlflow]``); each option
# turns its own part of the node on.
LIST_GROUPS = ("logger",)


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can name it first in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)


register_configs()


def config_dir() -> Path:
    """The ``conf/`` tree: packaged next to the code in a wheel, at the repo root in a checkout."""
    here = Path(__file__).resolve().parents[1]  # the package: densenet_exp/
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"config tree not found next to {here} or at the repository root")
