"""catsdogs: data augmentation and transfer learning on cats vs dogs (Keras 3, MLflow, DVC)."""

import logging
import os

# Before any module of the package imports mlflow: no usage data leaves the machine (MLflow 3
# sends telemetry by default). A user who wants it can set MLFLOW_DISABLE_TELEMETRY=false.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def configure_logging(level: int = logging.INFO) -> None:
    """Called once by each entry point (stage main or CLI), never on import."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
