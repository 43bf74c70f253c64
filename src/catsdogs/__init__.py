"""catsdogs: data augmentation and transfer learning on cats vs dogs (Keras 3, MLflow, DVC)."""

import logging


def configure_logging(level: int = logging.INFO) -> None:
    """Called once by each entry point (stage main or CLI), never on import."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
