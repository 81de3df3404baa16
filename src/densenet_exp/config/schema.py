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
    name: str = "densenet_bc_digits"  # the preset's name (model=...); printed and logged
    growth_rate: int = 12  # k: feature maps each dense layer adds
    # layers per dense block; null when ``depth`` gives them (the paper's CIFAR presets)
    block_config: Optional[list[int]] = field(default_factory=lambda: [3, 3, 3])
    depth: Optional[int] = None  # CIFAR L: 3 blocks of (L-4)/3 layers, or (L-4)/6 with bottleneck
    num_init_features: int = 24  # feature maps the stem puts out
    bottleneck: bool = True  # "B": BN-act-1x1 conv to bn_size*k before each 3x3 conv
    bn_size: int = 4  # bottleneck width in multiples of growth_rate
    compression: float = 0.5  # "C" when < 1: the share of feature maps a transition keeps
    drop_rate: float = 0.0  # dropout after each dense layer
    stem: Stem = Stem.cifar  # cifar: one 3x3 conv; imagenet: 7x7/s2 conv + 3x3/s2 max-pool
    # recompute each dense layer's concatenation + BN in the backward pass (less memory, slower)
    memory_efficient: bool = False
    # the same network and parameters either way: plain (models/densenet.py, the default small
    # model's: fast gains nothing there) or fast (models/fast, every named preset's)
    impl: Impl = Impl.plain
    num_classes: Optional[int] = None  # null: the number of classes found in the data
    pretrained: Optional[str] = None  # a local torchvision-format state-dict file


@dataclass
class ConvConfig:
    # standard 3x3 conv, dsconv (depthwise 3x3 then pointwise 1x1) or custom (_target_)
    type: ConvType = ConvType.standard
    kernel_size: int = 3  # of the dense layers' spatial conv
    dilation: int = 1  # of the dense layers' spatial conv
    inner_bn: bool = True  # BN between depthwise and pointwise (dsconv only)
    # type=custom: the class, called as cls(in_channels, out_channels, **params) by Hydra
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # type=custom: keyword arguments


@dataclass
class ActConfig:
    name: ActName = ActName.relu  # the activation after every BN; custom: _target_
    prelu_init: float = 0.25  # name=prelu: the slope's starting value
    prelu_per_channel: bool = False  # name=prelu: a slope per channel (else one per layer)
    # name=custom: the class, called as cls(**params), plus num_channels=C if it takes that
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # name=custom: keyword arguments


@dataclass
class NormConfig:
    type: NormType = NormType.batch  # batch: BatchNorm2d (SyncBatchNorm with sync_bn); custom
    # type=custom: the class, called with the channel count (as num_channels=/num_features= if
    # it takes either, e.g. torch.nn.GroupNorm, else first) and **params, by Hydra
    _target_: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)  # type=custom: keyword arguments


@dataclass
class AmpConfig:
    opt_level: OptLevel = OptLevel.O0  # APEX's levels on torch.amp: O0 fp32 ... O3 all low dtype
    dtype: AmpDtype = AmpDtype.auto  # the low dtype; auto: float16 on CUDA, bfloat16 on CPU
    keep_batchnorm_fp32: Optional[bool] = None  # null: the level's default
    master_weights: Optional[bool] = None  # null: the level's default
    loss_scale: Optional[str] = None  # null: the level's default; "dynamic" or a number
    backend: AmpBackend = AmpBackend.native  # apex: an error that explains apex.amp is gone

    def __post_init__(self) -> None:
        parse_loss_scale(self.loss_scale)  # a bad value fails when the config is made

    @property
    def requested_loss_scale(self) -> str | float | None:
        """None (the level's default), ``"dynamic"`` or a number."""
        return parse_loss_scale(self.loss_scale)


@dataclass
class InitConfig:
    name: InitName = InitName.kaiming  # conv and linear weights; default: torch's own init
    mode: InitMode = InitMode.fan_out  # kaiming only
    distribution: InitDistribution = InitDistribution.normal  # kaiming and xavier


@dataclass
class DataConfig:
    name: DataName = DataName.digits  # digits (embedded), imagefolder (your images), synthetic
    root: Optional[str] = None  # digits: its folder (null: ~/.cache/densenet_exp/digits)
    train_dir: str = "train"  # imagefolder: the training split's folder under root
    val_dir: str = "val"  # imagefolder: the validation split's folder under root
    val_split: float = 0.2  # share held out for validation when there is no val folder
    image_size: int = 16  # side of the square images the network sees
    batch_size: int = 64  # per rank
    num_workers: str = "0"  # loader workers per rank: "auto" (what the rank's cores allow) or N
    pin_memory: bool = True  # page-locked batches for faster copies to a GPU
    persistent_workers: bool = True  # keep loader workers between epochs
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel normalisation
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel normalisation
    # training augmentation: none, light (small affine jitter, no flips), imagenet (crop + flip)
    augment: Augment = Augment.light
    cache: CacheMode = CacheMode.auto  # decode once, keep uint8 in RAM (data/cache.py)
    # data.cache=disk's folder (null: .densenet_exp_cache in the data folder, or the user's cache)
    cache_dir: Optional[str] = None
    augment_on: AugmentOn = AugmentOn.auto  # where the train augmentation runs (data/augment.py)
    decode: DecodeOn = DecodeOn.cpu  # where uncached JPEGs are decoded (data/streamed.py)
    eval_crop_ratio: float = 1.0  # eval: resize to image_size / ratio, then center-crop image_size
    shuffle: bool = True  # shuffle the training split every epoch
    on_bad_image: OnBadImage = OnBadImage.skip  # an unreadable image: skip it (logged) or error
    split_seed: int = 0  # fixed seed of the train/val split when there is no val folder
    # data=synthetic (random images with a class-dependent signal): training images
    synthetic_train_size: int = 256
    synthetic_val_size: int = 64  # data=synthetic: validation images
    synthetic_classes: int = 10  # data=synthetic: classes

    def __post_init__(self) -> None:
        parse_count(self.num_workers, "data.num_workers", 0)

    @property
    def workers(self) -> int | None:
        """Loader workers per rank; None: ``auto``, what the rank's cores allow."""
        return parse_count(self.num_workers, "data.num_workers", 0)


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd  # sgd (momentum) or adamw
    lr: float = 0.1  # peak learning rate, reached after the warmup
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 1e-4  # decoupled for adamw, L2 for sgd
    no_decay_norm_bias: bool = True  # no weight decay on norm, bias and PReLU parameters


@dataclass
class SchedConfig:
    name: SchedName = SchedName.cos  # the learning-rate schedule after the warmup, per step
    warmup_epochs: float = 1.0  # linear warmup from 0 to optim.lr (fractions allowed)
    min_lr_ratio: float = 0.0  # cos/poly: final lr as a fraction of optim.lr
    power: float = 0.9  # poly
    step_size: int = 30  # step: epochs between decays
    milestones: list[int] = field(default_factory=lambda: [30, 60, 90])  # multistep: epochs
    gamma: float = 0.1  # step, multistep


@dataclass
class TrainerConfig:
    epochs: int = 15  # training epochs
    max_steps: Optional[int] = None  # stop after this many optimizer steps (null: epochs decide)
    device: DeviceName = DeviceName.auto  # auto: cuda when a GPU is visible, else cpu
    seed: int = 42  # weights, data order and augmentation (a sweep varies it for replicas)
    deterministic: bool = False  # deterministic kernels (slower), for bit-identical reruns
    channels_last: bool = False  # NHWC memory format (faster convs on recent GPUs)
    compile: bool = False  # torch.compile the model
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: Optional[float] = None  # max global grad norm (null: no clipping)
    loss: LossName = LossName.ce  # ce (cross-entropy) or focal
    focal_gamma: float = 2.0  # loss=focal: the focusing exponent
    label_smoothing: float = 0.0  # share of the target spread over the other classes
    ema: Optional[float] = None  # EMA decay of the weights, e.g. 0.999 (null: off)
    eval_every: int = 1  # epochs
    ckpt_every_n_steps: int = 0  # 0: only at the end of each epoch
    resume: Optional[str] = None  # null, "auto" (this run dir's last.pt) or a checkpoint path
    progress: bool = True  # a progress bar on a terminal
    log_every_n_steps: int = 50  # train loss to train.log and the loggers every N steps
    max_nonfinite_steps: int = 5  # stop after this many consecutive steps with a non-finite loss
    # CPU, memory_efficient: hand glibc's freed heap pages back to the OS during a step (heap.py)
    heap_trim: bool = True


@dataclass
class DistConfig:
    nproc_per_node: str = "auto"  # "auto": one rank per visible GPU, or 1 on CPU
    nnodes: int = 1  # machines; > 1: the same command on each, with one rdzv_endpoint
    # host:port of the rendezvous (torch elastic c10d); port 0 on one machine: a free port
    rdzv_endpoint: str = "localhost:0"
    rdzv_id: str = "densenet_exp"  # the rendezvous's name, the same on every machine
    backend: DistBackend = DistBackend.auto  # auto: nccl on GPUs, gloo on CPU
    timeout_s: int = 300  # how long ranks wait for each other (collectives, rendezvous)

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
    sync_bn: bool = False  # BatchNorm statistics over every rank (SyncBatchNorm)
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
