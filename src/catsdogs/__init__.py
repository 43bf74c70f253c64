"""catsdogs: data augmentation and transfer learning on cats vs dogs (Keras 3, MLflow, DVC)."""

import logging
import os
from pathlib import Path

# Before any module of the package imports mlflow: no usage data leaves the machine (MLflow 3
# sends telemetry by default). A user who wants it can set MLFLOW_DISABLE_TELEMETRY=false.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Before TensorFlow loads: its oneDNN kernels are on by default only on CPUs with AVX512/AMX
# extensions, yet on an AVX2-only CPU they also train the book CNN faster at float32
# (`python -m bench.kernels` measures it). TF_ENABLE_ONEDNN_OPTS=0 restores TensorFlow's own choice.
# Serving answers one image at a time, where TensorFlow's own kernels are faster: serve.py turns
# oneDNN off again unless the user chose (ONEDNN_SET_BY_USER). The mark tells child processes
# (dvc stages, `mlflow models serve`) that the value they inherit is this default, not a choice.
_ONEDNN_DEFAULT_MARK = "CATSDOGS_DEFAULT_TF_ENABLE_ONEDNN_OPTS"
ONEDNN_SET_BY_USER = "TF_ENABLE_ONEDNN_OPTS" in os.environ and (
    os.environ.get(_ONEDNN_DEFAULT_MARK) != os.environ["TF_ENABLE_ONEDNN_OPTS"])
if not ONEDNN_SET_BY_USER:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = os.environ[_ONEDNN_DEFAULT_MARK] = "1"


def configure_logging(level: int = logging.INFO) -> None:
    """Called once by each entry point (stage main or CLI), never on import."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def cpu_has_fast_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo; False elsewhere."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo with its family and model numbers, which tell its generation
    where a virtual machine's name does not ("AMD EPYC (family 26, model 2)"); the platform's processor name
    elsewhere."""
    import platform

    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        name = fields["model name"]
    except (OSError, KeyError):
        return platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def describe_machine() -> str:
    """'<CPU model>, <n> cores': what a result was measured on."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def error_line(err: BaseException, limit: int = 300) -> str:
    """An exception's first line, at most `limit` characters (or its type's name): one line for the user,
    where libraries raise pages of context."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[:limit] + "..."
