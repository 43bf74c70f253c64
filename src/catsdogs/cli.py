"""The `catsdogs` command: a thin dispatcher to the stages and tools.

    catsdogs predict PHOTO... [--model URI]      label and probabilities per file (default: the champion)
    catsdogs augment-preview PHOTO [--out PNG]   a grid of random augmentations of one photo
    catsdogs demo-data FOLDER                    a small generated data set (stripes: cat vs dog)
    catsdogs services up|down|status|add-user    the team's tracking server, database and object store
    catsdogs score INPUT... --out PATH           batch scoring of folders, files or tables on Spark (score.py)
    catsdogs plots [show|diff] [DVC_ARGS...]     dvc plots as a page that draws offline (plots.py)
    catsdogs ui [--port 5000]                    the MLflow UI of the tracking store, and the link to the runs
    catsdogs download | split | features | train NAME | evaluate NAME | report | compress | register  (DVC stages)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from catsdogs import configure_logging
from catsdogs.config import ConfigError, load_params

STAGES = ("download", "split", "features", "train", "evaluate", "report", "compress", "register")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catsdogs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify image files with a registered model")
    predict.add_argument("paths", nargs="+")
    predict.add_argument("--model", help="model URI (default: models:/<register.name>@<register.alias>)")
    preview = commands.add_parser("augment-preview", help="write a grid of random augmentations of a photo")
    preview.add_argument("photo", type=Path)
    preview.add_argument("--out", type=Path, default=Path("reports/augmentation_preview.png"))
    preview.add_argument("--count", type=int, default=11)
    preview.add_argument("--seed", type=int, default=0)
    demo = commands.add_parser("demo-data", help="write a small generated data set (stripes: cat vs dog)")
    demo.add_argument("folder", type=Path)
    demo.add_argument("--per-class", type=int, default=100)
    demo.add_argument("--layout", default="filtered", help="as which archive: filtered, petimages, kaggle, classes")
    services = commands.add_parser("services", help="start, stop or inspect the team services (services.py)")
    services.add_argument("action", choices=("up", "down", "status", "add-user"))
    services.add_argument("username", nargs="?", help="add-user: the new login's name")
    services.add_argument("--dir", type=Path, default=Path(".services"), help="state, secrets and logs")
    services.add_argument("--host", help="address the services bind to (first up: 127.0.0.1)")
    services.add_argument("--backend-store-uri", help="an existing PostgreSQL instead of a local cluster")
    services.add_argument("--s3-endpoint", help="an existing S3 endpoint (keys: AWS_ACCESS_KEY_ID/SECRET) instead")
    services.add_argument("--port", action="append", default=[], metavar="SERVICE=PORT",
                          help="a fixed port for postgres, s3 or mlflow (default: free ports, chosen once)")
    commands.add_parser("score", help="classify folders, files or tables of photos on Apache Spark",
                        add_help=False)
    commands.add_parser("plots", help="dvc plots show / diff as an HTML page that needs no network",
                        add_help=False)
    ui = commands.add_parser("ui", help="the MLflow UI of the project's tracking store (a server's: its link)")
    ui.add_argument("--port", type=_tcp_port, default=5000, help="for a local store: the UI's port on 127.0.0.1")
    for stage in STAGES:
        commands.add_parser(stage, help=f"DVC stage {stage} (python -m catsdogs.{stage})", add_help=False)
    args, rest = parser.parse_known_args(argv)
    configure_logging()

    if args.command == "score":
        from catsdogs import score

        return score.main(rest)
    if args.command == "plots":
        from catsdogs import plots

        return plots.main(rest)
    if args.command in STAGES:
        import importlib

        module = importlib.import_module(f"catsdogs.{args.command}")
        sys.argv = [f"catsdogs {args.command}", *rest]
        module.main()
        return 0
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        if args.command == "predict":
            return _predict(args.paths, args.model)
        if args.command == "augment-preview":
            from matplotlib.backend_bases import FigureCanvasBase

            formats = sorted(FigureCanvasBase.get_supported_filetypes())
            if args.count < 1 or args.out.suffix.lower().lstrip(".") not in formats:
                preview.error(f"--count must be >= 1 and --out a file name ending in one of {', '.join(formats)}")
            return _preview(args.photo, args.out, args.count, args.seed)
        if args.command == "ui":
            return _ui(args.port)
    except ConfigError as err:  # params.yaml missing or invalid: one line, as the stages say it
        print(f"catsdogs {args.command}: {err}", file=sys.stderr)
        return 1
    if args.command == "services":
        return _services(args)
    from catsdogs.synthetic import LAYOUTS, write_dataset

    if args.per_class < 1 or args.layout not in LAYOUTS:
        demo.error(f"--per-class must be >= 1 and --layout one of {', '.join(LAYOUTS)}")
    paths = write_dataset(args.folder, per_class=args.per_class, layout=args.layout)
    print(f"wrote {len(paths)} images under {args.folder}")
    return 0


def _predict(paths: list[str], model_uri: str | None) -> int:
    from mlflow.exceptions import MlflowException

    from catsdogs.serve import predict_files
    from catsdogs.tracking import TRACKING_ERRORS, model_failure, registered_model_uri, tracking_failure

    uri = registered_model_uri(model_uri)
    try:
        results, errors = predict_files(paths, uri)
    except MlflowException as err:  # each file's own errors are in `errors`: this one is the model's
        print(f"catsdogs predict: {model_failure(uri, err)}", file=sys.stderr)
        return 1
    except TRACKING_ERRORS as err:
        print(f"catsdogs predict: {tracking_failure(err)}", file=sys.stderr)
        return 1
    for row in results.to_dict("records"):
        probabilities = "  ".join(f"{k}={v:.4f}" for k, v in row.items() if k.startswith("p_"))
        print(f"{row['path']}\t{row['label']}\t{probabilities}")
    for path, message in errors.items():
        print(f"{path}\terror: {message}", file=sys.stderr)
    return 1 if errors else 0


def _tcp_port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _ui(port: int) -> int:
    """Print the link to the experiment's training runs, then serve the UI of a local store on 127.0.0.1 (a
    tracking server serves its own: the link is to it). MLflow 3's UI opens an experiment on its GenAI pages
    unless the link carries the switch to model training (workflowType)."""
    import mlflow

    from catsdogs.tracking import TRACKING_ERRORS, tracking_failure, use_tracking_store

    params = load_params()
    use_tracking_store(params.mlflow)
    store = mlflow.get_tracking_uri()
    server = store.startswith(("http://", "https://"))
    if not server:
        from catsdogs.services import port_open

        if port_open("127.0.0.1", port):
            print(f"catsdogs ui: port {port} on 127.0.0.1 is in use (a UI left running?); choose another: "
                  "catsdogs ui --port PORT", file=sys.stderr)
            return 1
    try:
        experiment = mlflow.get_experiment_by_name(params.mlflow.experiment)
    except TRACKING_ERRORS as err:
        print(f"catsdogs ui: {tracking_failure(err)}", file=sys.stderr)
        return 1
    base = store.rstrip("/") if server else f"http://127.0.0.1:{port}"
    print(f"training runs: {base}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
          if experiment else f"no runs yet in {store}: dvc repro first", flush=True)
    if server:
        return 0
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
               "--port", str(port)]
    os.execv(sys.executable, command)


def _services(args: argparse.Namespace) -> int:
    from catsdogs import services

    if args.username and args.action != "add-user":
        print(f"services {args.action} takes no NAME (only add-user does), got {args.username!r}", file=sys.stderr)
        return 2
    try:
        if args.action == "up":
            ports = {}
            for pair in args.port:
                name, _, port = pair.partition("=")
                if not port.isdigit():
                    print(f"--port takes SERVICE=PORT, got {pair!r}", file=sys.stderr)
                    return 2
                ports[name] = int(port)
            state = services.up(args.dir, args.host, args.backend_store_uri, args.s3_endpoint, ports)
            print(f"tracking server: {state.tracking_uri} (user {services.ADMIN}; password in {args.dir}/env)")
            print(f"object store:    {state.s3_url} (buckets {', '.join(services.BUCKETS.values())})")
            print(f"to use them:     source {args.dir}/env")
        elif args.action == "down":
            stopped = services.down(args.dir)
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        elif args.action == "status":
            for name, where in services.status(args.dir).items():
                print(f"{name:9}{where}")
        else:
            if not args.username:
                print("add-user needs a user name: catsdogs services add-user NAME", file=sys.stderr)
                return 2
            password = services.add_user(args.dir, args.username)
            print(f"created {args.username} (read-only) with password: {password}")
    except services.ServiceError as err:
        print(f"services {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


def _preview(photo: Path, out: Path, count: int, seed: int) -> int:
    params = load_params()  # before Keras loads: a missing params.yaml is one line, at once
    from catsdogs.augment import preview_grid
    from catsdogs.images import ImageError, load_pixels

    try:
        pixels = load_pixels(photo, params.image_size, params.split.max_pixels)
    except (ImageError, OSError) as err:
        print(f"{photo}: {err}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(params.augment, pixels, count, seed).savefig(out, dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
