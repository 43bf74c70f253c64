"""catsdogs services without starting anything: the state kept in DIR, the env file, what status says.
(The services themselves run in tests/test_team.py.)"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from catsdogs import services


def test_state_is_chosen_once_and_kept_private(tmp_path: Path) -> None:
    paths = services.Paths(tmp_path / ".services")
    first = services.load_or_create_state(paths, None, None, None)
    assert first.host == "127.0.0.1"
    ports = list(first.ports.values())
    assert len(set(ports)) == len(ports) == 3 + len(services.WEED_PORTS)
    assert len({first.pg_password, first.admin_password, first.s3_secret_key, first.flask_secret}) == 4
    assert paths.state.stat().st_mode & 0o077 == 0
    again = services.load_or_create_state(paths, None, None, None)
    assert again == first, "a second up reuses the ports and secrets"
    moved = services.load_or_create_state(paths, "127.0.0.2", None, None)  # nothing runs: it may move
    assert moved.host == "127.0.0.2" and moved.ports == first.ports
    fixed = services.load_or_create_state(paths, None, None, None, {"mlflow": 5123})
    assert fixed.ports == {**first.ports, "mlflow": 5123} and fixed.host == "127.0.0.2"
    with pytest.raises(services.ServiceError, match="unknown service 'redis'"):
        services.load_or_create_state(paths, None, None, None, {"redis": 6379})


def test_env_file_sources_in_a_real_shell(tmp_path: Path) -> None:
    paths = services.Paths(tmp_path / ".services")
    state = services.load_or_create_state(paths, None, None, None)
    state.admin_password = "it's $HOME `and` \"quotes\""
    services.write_env(paths, state)
    assert paths.env.stat().st_mode & 0o077 == 0
    shown = subprocess.run(["bash", "-c", f"source {paths.env} && printf '%s|%s' \"$MLFLOW_TRACKING_PASSWORD\" "
                            "\"$MLFLOW_TRACKING_URI\""], capture_output=True, text=True, check=True).stdout
    assert shown == f"{state.admin_password}|http://127.0.0.1:{state.ports['mlflow']}"
    assert services.read_env_file(paths.env)["MLFLOW_TRACKING_PASSWORD"] == state.admin_password


def test_status_before_up_and_when_stopped(tmp_path: Path) -> None:
    assert set(services.status(tmp_path / "none").values()) == {"not set up (run: catsdogs services up)"}
    paths = services.Paths(tmp_path / ".services")
    services.load_or_create_state(paths, None, None, None)
    assert services.status(paths.root) == dict.fromkeys(services.SERVICES, "stopped")
    assert services.down(paths.root) == []


def test_a_port_another_program_holds_stops_up_before_anything_starts(tmp_path: Path) -> None:
    paths = services.Paths(tmp_path / ".services")
    with socket.create_server(("127.0.0.1", 0)) as held:  # listening, as a UI left on port 5000 would be
        port = held.getsockname()[1]
        services.load_or_create_state(paths, None, None, None, {"mlflow": port})
        assert services.status(paths.root)["mlflow"] == f"stopped; another program listens on 127.0.0.1:{port}"
        with pytest.raises(services.ServiceError, match=f"port {port} \\(mlflow\\) on 127.0.0.1 is in use by "
                                                        "another program; choose another: .* --port mlflow=PORT"):
            services.up(paths.root)
    assert not (paths.root / "postgres").exists() and not list(paths.root.glob("*.pid"))  # nothing started
    with pytest.raises(services.ServiceError, match="port 99999 for mlflow is not a TCP port"):
        services.load_or_create_state(paths, None, None, None, {"mlflow": 99999})


def test_external_services_are_named_without_their_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    paths = services.Paths(tmp_path / ".services")
    with pytest.raises(services.ServiceError, match="AWS_ACCESS_KEY_ID"):
        services.load_or_create_state(paths, None, None, "https://s3.example.com")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    state = services.load_or_create_state(paths, None, "postgresql://u:hunter2@db.example.com/mlflow",
                                          "https://s3.example.com")
    assert state.store_uri("mlflow_auth") == "postgresql://u:hunter2@db.example.com/mlflow_auth"
    shown = services.status(paths.root)
    assert shown["postgres"] == "external: postgresql://u:***@db.example.com/mlflow"
    assert shown["s3"] == "external: https://s3.example.com"
