"""Reads params.yaml into frozen, typed dataclasses; the only module that reads configuration.

Every key in params.yaml has a field of the same name here, and every field must be present:
an unknown or missing key fails at load time and names itself.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")

# Where the stages read and write, relative to the project root (dvc.yaml declares the same paths).
RAW_DIR = Path("data/raw")
SPLITS_DIR = Path("data/splits")
SPLIT_NAMES = ("train", "val", "test")
MODELS_DIR = Path("models")
FEATURES_DIR = Path("features")
COMPRESSED_DIR = MODELS_DIR / "compressed"  # the int8 copy of the registered model (stage compress)
EVALUATION_DIR = Path("evaluation")
REPORTS_DIR = Path("reports")
BACKUP_DIR = Path(".backup")  # interrupted training resumes from here; outside DVC's outputs
MODEL_NAMES = ("scratch", "augmented", "feature_extraction", "fine_tuning")
VGG16_MODELS = ("feature_extraction", "fine_tuning")  # trained on the features stage's cached activations
OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "plateau", "cosine")
INITIALIZERS = ("he_uniform", "glorot_uniform")
# Which trained model another may start from: the same architecture, earlier in the pipeline.
INIT_SOURCES = {"augmented": ("scratch",), "fine_tuning": ("feature_extraction",)}
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
FILL_MODES = ("nearest", "reflect", "constant", "wrap")
# The validation metrics the register gate can compare on, and whether a greater value is better.
GATE_METRICS = {"val_accuracy": True, "val_loss": False}


class ConfigError(ValueError):
    """params.yaml is malformed; the message names the key and says what is expected."""


@dataclass(frozen=True)
class DataParams:
    url: str
    sha256: str | None
    retries: int
    backoff_seconds: float
    timeout_seconds: float
    max_files: int
    max_bytes: int

    def __post_init__(self) -> None:
        if not self.url.strip():
            raise ConfigError("data.url is empty; give an http(s) URL, a file:// URL or a local path")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower())
        ):
            raise ConfigError(f"data.sha256 must be 64 hex digits or null, got {self.sha256!r}")
        _require(self.retries >= 0, "data.retries must be >= 0")
        _require(self.backoff_seconds >= 0, "data.backoff_seconds must be >= 0")
        _require(self.timeout_seconds > 0, "data.timeout_seconds must be > 0")
        _require(self.max_files > 0 and self.max_bytes > 0, "data.max_files and data.max_bytes must be > 0")


@dataclass(frozen=True)
class SplitParams:
    """Per-class sizes: all whole image counts, or all fractions in (0, 1) summing to at most 1.

    Each split must get images: training needs val, evaluation needs test. So 1 is always a count.
    """

    train: float
    val: float
    test: float
    seed: int
    near_duplicate_distance: int
    max_pixels: int

    def __post_init__(self) -> None:
        sizes = (self.train, self.val, self.test)
        _require(all(s >= 0 for s in sizes), f"split sizes must be >= 0, got {sizes}")
        if self.uses_fractions:
            _require(
                sum(sizes) <= 1 + 1e-9,
                f"split fractions train + val + test must be <= 1, got {sum(sizes):g}",
            )
        else:
            _require(
                all(float(s).is_integer() for s in sizes),
                "split sizes must be all whole image counts per class (e.g. 1000/250/250) "
                f"or all fractions below 1 (e.g. 0.7/0.15/0.15), got {sizes}",
            )
        _require(self.train > 0, "split.train must be > 0")
        _require(self.val > 0 and self.test > 0,
                 "split.val and split.test must be > 0: training validates on val, evaluation scores test")
        _require(0 <= self.near_duplicate_distance <= 32, "split.near_duplicate_distance must be in 0..32")
        _require(self.max_pixels > 0, "split.max_pixels must be > 0")

    @property
    def uses_fractions(self) -> bool:
        return all(s < 1 for s in (self.train, self.val, self.test))


@dataclass(frozen=True)
class PretrainedParams:
    weights: str  # "imagenet" (Keras downloads it) or a path to a .h5 file
    input_size: int | None  # side of the images the VGG16 models take, decoded at it; None: image_size

    def __post_init__(self) -> None:
        # 32: the smallest input VGG16's five pooling steps can take.
        _require(self.input_size is None or 32 <= self.input_size <= 1024,
                 f"pretrained.input_size must be null or in 32..1024, got {self.input_size}")
        if self.weights != "imagenet" and not self.weights.endswith((".h5", ".keras", ".weights.h5")):
            raise ConfigError(
                f"pretrained.weights must be 'imagenet' or a path to a .h5 weights file, got {self.weights!r}"
            )


@dataclass(frozen=True)
class AugmentParams:
    """The book's augmentation; each 0 / false turns that transform off."""

    rotation_degrees: float
    shift: float
    shear: float
    zoom: float
    horizontal_flip: bool
    fill_mode: str

    def __post_init__(self) -> None:
        _require(0 <= self.rotation_degrees <= 180, "augment.rotation_degrees must be in 0..180")
        for name in ("shift", "shear", "zoom"):
            _require(0 <= getattr(self, name) < 1, f"augment.{name} must be in [0, 1)")
        _one_of("augment.fill_mode", self.fill_mode, FILL_MODES)


@dataclass(frozen=True)
class ModelParams:
    """How one model trains (models.<name>.*)."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    augment: bool
    dropout: float
    schedule: str  # constant | plateau (halve after reduce_lr_patience bad epochs) | cosine (to 0 over epochs)
    early_stopping_patience: int  # epochs without val_loss improvement before stopping; 0: never stop early
    reduce_lr_patience: int  # with schedule: plateau
    init_from: str | None  # start from this trained model's weights (see INIT_SOURCES); null: from scratch
    label_smoothing: float  # training targets 0/1 pulled towards 0.5 by half this; 0: none
    weight_decay: float  # decoupled (as AdamW): each step shrinks every weight by learning rate x this; 0: none
    # VGG16 models: which cached training views (features stage) they train on, 0 being the images themselves;
    # None: every view with augment, view 0 without. The CNNs augment on the fly: None.
    views: tuple[int, ...] | None

    def __post_init__(self) -> None:
        _require(self.epochs > 0 and self.batch_size > 0, "models.*.epochs and batch_size must be > 0")
        _require(0 <= self.label_smoothing < 1, "models.*.label_smoothing must be in [0, 1)")
        _require(self.weight_decay >= 0, "models.*.weight_decay must be >= 0")
        _one_of("models.*.optimizer", self.optimizer, OPTIMIZERS)
        _one_of("models.*.schedule", self.schedule, SCHEDULES)
        _require((self.schedule == "plateau") == (self.reduce_lr_patience > 0),
                 "models.*.reduce_lr_patience must be > 0 with schedule: plateau, and 0 otherwise")
        _require(0 < self.learning_rate < 1, "models.*.learning_rate must be in (0, 1)")
        _require(0 <= self.dropout < 1, "models.*.dropout must be in [0, 1)")
        _require(self.early_stopping_patience >= 0, "models.*.early_stopping_patience must be >= 0")
        _require(self.reduce_lr_patience >= 0, "models.*.reduce_lr_patience must be >= 0")
        if self.views is not None:
            _require(len(self.views) > 0 and len(set(self.views)) == len(self.views) and min(self.views) >= 0,
                     f"models.*.views must be null or distinct view numbers >= 0, got {list(self.views)}")
            _require(self.augment or self.views == (0,),
                     f"models.*.views must be null or [0] with augment: false (view 0 is the only unaugmented "
                     f"one), got {list(self.views)}")


@dataclass(frozen=True)
class FeaturesParams:
    """The frozen VGG16 blocks 1-4 run once per view (features stage), not once per epoch."""

    views: int  # per training image: the original plus views - 1 augmented copies
    batch_size: int
    int8: bool  # blocks 1-4 quantized to int8 (as compress quantizes the served model); false: train.precision

    def __post_init__(self) -> None:
        _require(self.views >= 1 and self.batch_size >= 1, "features.views and features.batch_size must be >= 1")


@dataclass(frozen=True)
class CnnParams:
    """The small CNN of scratch and augmented: how it scales its input pixels and initialises its layers."""

    centered_inputs: bool  # true: pixels to [-1, 1]; false: to [0, 1] (the book's rescale=1/255)
    initializer: str  # kernels of the ReLU layers: he_uniform, or glorot_uniform (Keras's default, the book's)

    def __post_init__(self) -> None:
        _one_of("cnn.initializer", self.initializer, INITIALIZERS)


@dataclass(frozen=True)
class TrainParams:
    seed: int
    precision: str  # auto: bfloat16 where the hardware runs it fast, float32 elsewhere

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**32, f"train.seed must be in 0..2**32-1 (NumPy's seeds), got {self.seed}")
        _one_of("train.precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class MlflowParams:
    experiment: str
    tracking_uri: str  # MLFLOW_TRACKING_URI, when set, wins (see tracking.py)

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), "mlflow.experiment must name an experiment, got an empty name")
        _require(bool(self.tracking_uri.strip()), "mlflow.tracking_uri must be a store's URI (e.g. sqlite:///mlflow.db)")


@dataclass(frozen=True)
class CompressParams:
    """The int8 copy of the registered model (catsdogs.int8): how many training images calibrate it, and which of
    its layers stay in floating point."""

    calibration_images: int  # training images (seeded choice) whose activations set the int8 ranges
    int8_until: str | None  # the layer after which convolutions and dense layers stay in float; None: all int8

    def __post_init__(self) -> None:
        _require(self.calibration_images > 0, f"compress.calibration_images must be > 0, got {self.calibration_images}")


@dataclass(frozen=True)
class RegisterParams:
    """Which model is registered, under what name, and the validation gate that moves the alias (data, not code).

    The gate scores the candidate and the alias's holder on the current validation split: selection never
    sees test data. The candidate must clear the floors and beat the holder on `metric` by `min_delta`.
    """

    model: str  # one of MODEL_NAMES
    name: str  # registered model name
    alias: str  # moved to a new version only when it passes the gate
    metric: str  # one of GATE_METRICS
    min_delta: float  # the least improvement on `metric` over the holder (> 0)
    min_val_accuracy: float | None  # floor on validation accuracy; None: none
    max_val_loss: float | None  # ceiling on validation log loss; None: none
    int8: bool  # register the int8 copy (models/compressed) instead of the Keras model

    def __post_init__(self) -> None:
        _one_of("register.model", self.model, MODEL_NAMES)
        _one_of("register.metric", self.metric, tuple(GATE_METRICS))
        # MLflow's own rules, checked before any stage runs rather than when register reaches its registry
        _require(bool(self.name.strip()) and not set(self.name) & set("/:"),
                 f"register.name must be a name without '/' or ':', got {self.name!r}")
        _require(re.fullmatch(r"[\w-]+", self.alias) is not None and self.alias.lower() != "latest"
                 and re.fullmatch(r"[vV]\d+", self.alias) is None,
                 f"register.alias must be letters, digits, '_' or '-', and not 'latest' or v<number> (MLflow "
                 f"reserves them), got {self.alias!r}")
        _require(self.min_delta > 0, f"register.min_delta must be > 0, got {self.min_delta}")
        _require(self.min_val_accuracy is None or 0 <= self.min_val_accuracy <= 1,
                 f"register.min_val_accuracy must be in [0, 1] or null, got {self.min_val_accuracy}")
        _require(self.max_val_loss is None or self.max_val_loss > 0,
                 f"register.max_val_loss must be > 0 or null, got {self.max_val_loss}")


@dataclass(frozen=True)
class Params:
    image_size: int
    data: DataParams
    split: SplitParams
    pretrained: PretrainedParams
    augment: AugmentParams
    cnn: CnnParams
    features: FeaturesParams
    train: TrainParams
    models: dict[str, ModelParams]
    mlflow: MlflowParams
    compress: CompressParams
    register: RegisterParams

    def __post_init__(self) -> None:
        # 48: the smallest input the book's four conv + pool blocks can take.
        _require(48 <= self.image_size <= 1024, f"image_size must be in 48..1024, got {self.image_size}")
        _require(
            sorted(self.models) == sorted(MODEL_NAMES),
            f"models must have exactly the sections {', '.join(MODEL_NAMES)}; got {', '.join(self.models)}",
        )
        for name, settings in self.models.items():
            sources = INIT_SOURCES.get(name, ())
            if settings.init_from is not None and not sources:
                raise ConfigError(f"models.{name}.init_from must be null: no other model has its architecture")
            if settings.init_from is not None:
                _one_of(f"models.{name}.init_from", settings.init_from, sources)
            if settings.views is not None and name not in VGG16_MODELS:
                raise ConfigError(f"models.{name}.views must be null: only the VGG16 models train on cached views")
            if settings.views is not None and max(settings.views) >= self.features.views:
                raise ConfigError(f"models.{name}.views {list(settings.views)} asks for view {max(settings.views)}, "
                                  f"but features.views caches views 0..{self.features.views - 1}")

    def training_views(self, name: str) -> tuple[int, ...]:
        """The cached views VGG16 model `name` trains on (models.<name>.views, or what null stands for)."""
        settings = self.models[name]
        if settings.views is not None:
            return settings.views
        return tuple(range(self.features.views)) if settings.augment else (0,)

    @property
    def vgg16_input_size(self) -> int:
        """Side of the square images the VGG16 models take: each file is decoded and resized to it."""
        return self.pretrained.input_size or self.image_size


def parse_model_name(argv: list[str] | None, doc: str | None) -> str:
    """The one argument of the per-model stages: which model (one of MODEL_NAMES)."""
    import argparse

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    parser.add_argument("model", choices=MODEL_NAMES)
    return parser.parse_args(argv).model


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Load and validate params.yaml (relative to the working directory, which is the project root)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is missing; run from the project root (where dvc.yaml is)")
    with path.open(encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return build(Params, raw, where="")


def build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and simple types; `where` names the section."""
    label = where or "params.yaml"
    if not isinstance(raw, dict):
        raise ConfigError(f"{label} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])} (known keys: {', '.join(names)})")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"missing key {_join(where, missing[0])}")
    values = {name: _convert(hints[name], raw[name], _join(where, name)) for name in names}
    try:
        return cls(**values)
    except ConfigError as err:
        # a section that repeats under a mapping (models.<name>) writes its keys as models.*.<key>: name which
        parent = where.rpartition(".")[0]
        if not parent:
            raise
        raise ConfigError(str(err).replace(f"{parent}.*", where)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{label}: {err}") from err


def _convert(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (hint,) = [o for o in options if o is not type(None)]
        return _convert(hint, value, key)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {k: _convert(value_type, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_convert(item_type, v, key) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a params object (the names MLflow params use)."""
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for k, v in obj.items():
            flat.update(flatten(v, _join(prefix, str(k))))
        return flat
    return {prefix: obj}
