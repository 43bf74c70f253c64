"""Batch scoring on Apache Spark: every image file in folders, files or tables classified by a registered model.

    catsdogs score INPUT... --out PATH [--model URI] [--master URL] [--format parquet|csv] [--conf KEY=VALUE]

INPUT: a folder (searched recursively for image files by Spark's `binaryFile` source), an image file, or
a Parquet/CSV table with a `path` column (relative paths: from the working directory, as the split's).
The model (default: the champion of the configured tracking store) runs through
`mlflow.pyfunc.spark_udf` on every executor, the same pyfunc that `mlflow models serve` runs: it loads
once per executor Python worker and classifies Arrow batches of --batch-size images.
Output, as Spark writes it (a folder of part files): one row per input file, `path`, `label`,
`p_<class>`, `error` (null when fine) and `folder_label` (the parent folder's name where it names a
class, normalised as the training data's labels: `cats/` -> `cat`; else null). A corrupt, truncated,
non-image or oversized file gets its `error`; the job goes on. An unreadable INPUT or an unknown model
is one error line before Spark starts.
Needs the `spark` extra (pyspark) and Java 17+.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd  # at module level: Spark resolves the pandas UDF's type hints in this module's globals
from mlflow.exceptions import MlflowException

from catsdogs import configure_logging, error_line
from catsdogs.config import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
# Hadoop glob for Spark's binaryFile source: the suffixes in lower and upper case
IMAGE_GLOB = "*.{" + ",".join(s for suffix in IMAGE_SUFFIXES for s in (suffix, suffix.upper())) + "}"
TABLE_SUFFIXES = (".parquet", ".csv")
FORMATS = ("parquet", "csv")


class ScoreError(RuntimeError):
    """Bad arguments, inputs or model: said in one line before Spark starts work."""


@dataclass(frozen=True)
class Inputs:
    folders: tuple[str, ...]
    files: tuple[str, ...]
    tables: tuple[str, ...]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catsdogs score", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="folders, image files or .parquet/.csv tables with a path column")
    parser.add_argument("--out", required=True, help="output folder (Spark writes part files into it)")
    parser.add_argument("--model", help="model URI (default: models:/<register.name>@<register.alias>)")
    parser.add_argument("--master", default="local[*]", help="Spark master URL (default: local[*])")
    parser.add_argument("--format", choices=FORMATS, default="parquet")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting")
    parser.add_argument("--batch-size", type=int, default=32, help="images per Arrow batch (per model call)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        summary = score(args.inputs, args.out, args.model, args.master, args.format, parse_conf(args.conf),
                        args.batch_size, args.overwrite)
    except (ScoreError, ConfigError) as err:
        print(f"catsdogs score: {err}", file=sys.stderr)
        return 1
    print(f"{summary['files']} files, {summary['scored']} scored, {summary['errors']} errors, "
          f"{summary['images_per_second']:.1f} images/s ({summary['seconds']:.1f} s after Spark started); "
          f"wrote {args.out}")
    return 0


def parse_conf(pairs: list[str]) -> dict[str, str]:
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ScoreError(f"--conf takes KEY=VALUE, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


def score(inputs: list[str], out: str, model_uri: str | None, master: str, fmt: str, conf: dict[str, str],
          batch_size: int, overwrite: bool = False) -> dict[str, Any]:
    """Classify every input file; write one row per file to `out`; the summary counts."""
    if fmt not in FORMATS:
        raise ScoreError(f"--format must be one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise ScoreError("--batch-size must be >= 1")
    if Path(out).exists() and not overwrite:
        raise ScoreError(f"{out} exists; choose another --out or pass --overwrite")
    sources = classify_inputs(inputs)
    model_uri, class_names = resolve_model(model_uri)
    spark = start_spark(master, conf, batch_size)
    try:
        started = time.perf_counter()
        frame = predictions(spark, sources, model_uri, class_names)
        writer = frame.write.mode("overwrite" if overwrite else "errorifexists")
        (writer.option("header", True).csv(out) if fmt == "csv" else writer.parquet(out))
        seconds = time.perf_counter() - started
        written = spark.read.parquet(out) if fmt == "parquet" else spark.read.option("header", True).csv(out)
        files = written.count()
        errors = written.filter("error IS NOT NULL").count()
    finally:
        spark.stop()
    return {"files": files, "scored": files - errors, "errors": errors, "seconds": round(seconds, 1),
            "images_per_second": files / seconds if seconds else 0.0, "model": model_uri}


def classify_inputs(inputs: list[str]) -> Inputs:
    """Sort the INPUT arguments into folders, files and tables; each must exist and be readable."""
    folders, files, tables = [], [], []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise ScoreError(f"{raw}: no such file or folder")
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise ScoreError(f"{raw}: not readable")
        if path.is_dir():
            folders.append(str(path.resolve()))
        elif path.suffix.lower() in TABLE_SUFFIXES:
            tables.append(str(path.resolve()))
        else:
            files.append(str(path.resolve()))
    return Inputs(tuple(folders), tuple(files), tuple(tables))


def resolve_model(model_uri: str | None) -> tuple[str, list[str]]:
    """The model's URI (default: the registered champion) and its class names, read from its signature."""
    from mlflow.models import get_model_info

    from catsdogs.tracking import TRACKING_ERRORS, model_failure, registered_model_uri, tracking_failure

    uri = registered_model_uri(model_uri)
    try:
        info = get_model_info(uri)
    except MlflowException as err:
        raise ScoreError(model_failure(uri, err)) from None
    except TRACKING_ERRORS as err:
        raise ScoreError(tracking_failure(err)) from None
    signature = info.signature
    outputs = signature.outputs.input_names() if signature is not None and signature.outputs is not None else []
    class_names = [name.removeprefix("p_") for name in outputs if name.startswith("p_")]
    has_errors_param = signature is not None and signature.params is not None and any(
        p.name == "errors" for p in signature.params.params)
    if len(class_names) != 2 or not has_errors_param:
        raise ScoreError(f"{uri} is not a catsdogs image classifier that scores in batches (register it again "
                         "with this version: dvc repro register)")
    return uri, class_names


def start_spark(master: str, conf: dict[str, str], batch_size: int):
    """A Spark session for `master`; on a local master every port binds to the loopback address."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ScoreError("pyspark is not installed: pip install -e '.[spark]' (Spark also needs Java 17+)") from None
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (SparkSession.builder.master(master).appName("catsdogs score")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_size))
               # base64 in one line, as the pyfunc (and HTTP clients) send it, not wrapped every 76 characters
               .config("spark.sql.chunkBase64String.enabled", "false")
               .config("spark.ui.showConsoleProgress", "true")
               .config("spark.pyspark.python", sys.executable)
               .config("spark.pyspark.driver.python", sys.executable))
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # Py4J and Java start-up errors have no common base class
        raise ScoreError(f"Spark did not start on {master}: {error_line(err)} (Spark needs Java 17+ on PATH or "
                         "JAVA_HOME)") from None
    spark.sparkContext.setLogLevel("WARN")
    return spark


def predictions(spark, sources: Inputs, model_uri: str, class_names: list[str]):
    """path, label, p_<class>..., error, folder_label: one row per input file."""
    import mlflow
    from pyspark.sql import functions as F

    files = file_frame(spark, sources)
    result_type = ", ".join(["label string", *(f"p_{c} double" for c in class_names), "error string"])
    classify = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=f"struct<{result_type}>",
                                       env_manager="local", params={"errors": "column"})
    # One pass over the files: an unreadable one goes through the model as no bytes (it fails to decode,
    # cheaply) and keeps its read error, so no input is read twice.
    image = F.base64(F.coalesce("content", F.lit(b"").cast("binary"))).alias("image")
    scored = files.withColumn("prediction", classify(image))
    error = F.coalesce("read_error", F.nullif(F.col("prediction.error"), F.lit("")))  # the pyfunc: "" when fine
    rows = scored.select(F.col("path"), F.when(error.isNull(), F.col("prediction.label")).alias("label"),
                         *(F.when(error.isNull(), F.col(f"prediction.p_{c}")).alias(f"p_{c}") for c in class_names),
                         error.alias("error"))
    parent = folder_label(F.element_at(F.split("path", "/"), -2))  # cats/ -> cat, as the training data's
    return rows.withColumn("folder_label", F.when(parent.isin(class_names), parent))


def file_frame(spark, sources: Inputs):
    """(path, content, read_error) of every input file: Spark's binaryFile source for folders and files;
    tables' paths read by the executors (a missing or unreadable file gets a read_error, not a failed job)."""
    from pyspark.sql import functions as F

    frames = []
    binary = spark.read.format("binaryFile")
    if sources.folders:
        found = (binary.option("pathGlobFilter", IMAGE_GLOB).option("recursiveFileLookup", "true")
                 .load(list(sources.folders)))
        frames.append(found)
    if sources.files:
        frames.append(spark.read.format("binaryFile").load(list(sources.files)))
    frames = [f.select(F.regexp_replace("path", "^file:", "").alias("path"), "content",
                       F.lit(None).cast("string").alias("read_error")) for f in frames]
    if empty := empty_files(sources):  # binaryFile skips them, yet each file gets its row
        frames.append(spark.createDataFrame([(path, None, "empty file") for path in empty],
                                            "path string, content binary, read_error string"))
    for table in sources.tables:
        reader = spark.read.option("header", True)
        listed = reader.csv(table) if table.lower().endswith(".csv") else reader.parquet(table)
        if "path" not in listed.columns:
            raise ScoreError(f"{table} has no `path` column (columns: {', '.join(listed.columns)})")
        # a row keeps its path as the table gives it (to join on); a relative one is read from the working
        # directory of the command, as the split manifests' paths are
        path = F.col("path").cast("string")
        absolute = F.when(path.startswith("/") | path.contains(":/"), path).otherwise(
            F.concat(F.lit(os.getcwd() + "/"), path))
        frames.append(listed.select(path.alias("path"), read_file(absolute).alias("read"))
                      .select("path", "read.content", "read.read_error"))
    if not frames:
        raise ScoreError("no inputs")
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result


def empty_files(sources: Inputs) -> list[str]:
    """The zero-byte image files of the folder and file inputs (Spark's binaryFile source leaves them out)."""
    found = [path for path in sources.files if os.path.getsize(path) == 0]
    for folder in sources.folders:
        for parent, _, names in os.walk(folder):
            found += [os.path.join(parent, name) for name in names
                      if name.rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES and not name.startswith((".", "_"))
                      and os.path.getsize(os.path.join(parent, name)) == 0]
    return sorted(found)


def folder_label(column: Any):
    """A pandas UDF: a folder name as a label, normalised as the pipeline labels its data (`Cats` -> `cat`)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")  # type: ignore[call-overload]
    def normalise(names: pd.Series) -> pd.Series:
        from catsdogs.data import normalise_label

        return names.map(lambda name: None if name is None else normalise_label(name))

    return normalise(column)


def read_file(column: Any):
    """A pandas UDF: each path's bytes, or why they could not be read."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("struct<content binary, read_error string>")  # type: ignore[call-overload]
    def read(paths: pd.Series) -> pd.DataFrame:
        contents: list[bytes | None] = []
        errors: list[str | None] = []
        for path in paths:
            try:
                with open(path.removeprefix("file:"), "rb") as f:
                    contents.append(f.read())
                errors.append(None)
            except (OSError, TypeError, AttributeError) as err:
                contents.append(None)
                errors.append(getattr(err, "strerror", None) or str(err) or type(err).__name__)
        return pd.DataFrame({"content": contents, "read_error": errors})

    return read(column)


if __name__ == "__main__":
    sys.exit(main())
