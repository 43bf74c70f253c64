"""What the benchmark parts share: the benchmark workspace, its environment, servers and a browser.

The workspace is a fresh clone of this repository's HEAD (an empty DVC cache and MLflow store) whose
params.yaml points at the data and weights given; the parts run the workspace's own code. `served_model`
starts `mlflow models serve`, `tracking_ui` `mlflow server`, each on a free loopback port, stopped by its
process group; `chromium` is the system's Chromium under Playwright. The tests use them too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
# MLflow 3's UI opens an experiment on its GenAI pages unless the browser switched to "Model training"; a link
# with this query carries the switch (README's link does).
TRAINING_VIEW = "workflowType=machine_learning"
# A Playwright page function: true once DVC's plots page has drawn a vega chart.
VEGA_DRAWN = "() => document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length > 0"


def bench_env(workspace: Path) -> dict[str, str]:
    """The workspace's own code (not an editable install of this checkout), the bench package, this venv's
    tools, no telemetry, no MLflow settings inherited from the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(PYTHONPATH=f"{workspace / 'src'}{os.pathsep}{ROOT}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def make_workspace(workspace: Path, data: Path, weights: Path, precision: str | None = None) -> None:
    """A fresh clone of HEAD in `workspace`, with data.url and pretrained.weights set to the given files
    (and train.precision to `precision`, if given)."""
    if workspace.exists():
        shutil.rmtree(workspace)
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workspace)], check=True)
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"]["url"], params["pretrained"]["weights"] = str(data), str(weights)
    if precision:
        params["train"]["precision"] = precision
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def write_result(path: Path, result: dict) -> None:
    """A part's JSON: written to `path` (its folder made) and printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def run_part(module: str, args: list, workspace: Path) -> None:
    """`python -m bench.<module> ARGS` in the workspace, with its code and environment."""
    command = [sys.executable, "-u", "-m", f"bench.{module}", *map(str, args)]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=workspace, env=bench_env(workspace), check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_model(project: Path, model_uri: str = "models:/catsdogs@champion", tracking_uri: str | None = None,
                 timeout: float = 300, extra_args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow models serve --env-manager local` of `model_uri` on 127.0.0.1; yields the server's base URL.

    The server runs from `project` (its MLflow store: `tracking_uri`, default the project's mlflow.db), in
    its own process group, logging to project/serve.log, and is stopped by that group on exit. `extra_env`
    adds variables (a tracking server's MLFLOW_TRACKING_USERNAME/PASSWORD, say).
    """
    with served_model_process(project, model_uri, tracking_uri, timeout, extra_args, extra_env) as (url, _):
        yield url


@contextmanager
def served_model_process(project: Path, model_uri: str = "models:/catsdogs@champion", tracking_uri: str | None = None,
                         timeout: float = 300, extra_args: tuple[str, ...] = (),
                         extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """served_model, yielding (base URL, the server's process: the leader of its process group)."""
    port = free_port()
    env = server_env(MLFLOW_TRACKING_URI=tracking_uri or f"sqlite:///{project.resolve()}/mlflow.db",
                     **(extra_env or {}))
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
               "local", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with server_process(command, project, env, project / "serve.log", f"{url}/ping", timeout) as process:
        yield url, process


def group_rss(leader: subprocess.Popen) -> int:
    """Bytes resident in the process group `leader` leads (a server and its workers)."""
    return int(_group_sum(leader, lambda process: process.memory_info().rss))


def group_cpu_seconds(leader: subprocess.Popen) -> float:
    """CPU seconds (user and system) that the live processes of `leader`'s group have used so far."""
    return _group_sum(leader, lambda process: sum(process.cpu_times()[:2]))


def _group_sum(leader: subprocess.Popen, measure: Callable[[psutil.Process], float]) -> float:
    total = 0.0
    for process in psutil.process_iter(["pid"]):
        with suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.info["pid"]) == leader.pid:
                total += measure(process)
    return total


@contextmanager
def tracking_ui(project: Path, timeout: float = 120) -> Iterator[str]:
    """`mlflow server` over the project's store (mlflow.db, its artifacts where the runs logged them) on
    127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               f"sqlite:///{project.resolve()}/mlflow.db", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with server_process(command, project, env, project / "ui.log", f"{url}/health", timeout):
        yield url


def server_env(**extra: str) -> dict[str, str]:
    """A server's environment: no MLflow settings inherited from the caller, no telemetry, this venv's tools
    first on PATH (the servers start `uvicorn` from it, as in an activated venv), then `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return {**env, **extra}


def chromium_executable() -> str | None:
    """The system's Chromium (Debian: apt-get install chromium): Playwright's own download needs internet."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


@contextmanager
def chromium() -> Iterator:
    """A headless Chromium under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Chromium's sandbox refuses to run as root (containers, CI); as any other user it stays on.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=chromium_executable(), args=args)
        try:
            yield browser
        finally:
            browser.close()


def offline_context(browser, requested: list[str]):
    """A browser context that serves file:// pages only: any other request is recorded in `requested` and
    refused, as with no network."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def route(handler) -> None:
        if handler.request.url.startswith("file:"):
            handler.continue_()
        else:
            requested.append(handler.request.url)
            handler.abort()

    context.route("**/*", route)
    return context


@contextmanager
def server_process(args: list[str], cwd: Path, env: dict[str, str], log_path: Path, ready_url: str,
                   timeout: float) -> Iterator[subprocess.Popen]:
    """Run a server in its own process group, logging to `log_path`, until `ready_url` answers 200; stop the
    group (the server and its workers) on exit."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_for_ping(ready_url, process, log_path, timeout)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for_ping(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited: {log_path.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(1)
