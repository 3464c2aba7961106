"""docker-compose.yml: the standalone server by default, the SFU stack (Janus, SR workers, coturn) with
``--profile sfu``; every image built from this repository's Dockerfile, every service on the host's network,
the configurations mounted from deploy/, and the environment the server reads. Plus ``deploy/docker/start.sh``,
which starts each service in its container, run here with stand-ins for the programs it starts."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from srtc.server.__main__ import parse_command_line
from srtc.server.worker import parse_args as parse_worker_args
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
START = REPO / "deploy" / "docker" / "start.sh"
SFU = {"janus", "worker", "coturn"}
SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml): cannot read the file")
    return yaml.safe_load(COMPOSE.read_text())["services"]


def environment(service: dict[str, Any]) -> set[str]:
    return {entry.split("=", 1)[0] for entry in service.get("environment", [])}


def test_the_default_profile_is_the_server_and_sfu_adds_janus_workers_and_coturn(services: dict) -> None:
    assert {name for name, s in services.items() if not s.get("profiles")} == {"server"}
    assert {name for name, s in services.items() if "sfu" in s.get("profiles", [])} == SFU


def test_every_service_shares_the_hosts_network(services: dict) -> None:
    for name, service in services.items():
        assert service.get("network_mode") == "host", name
        assert "ports" not in service and "networks" not in service, name


def test_every_image_is_built_from_the_dockerfile_on_one_base(services: dict) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = {stage: image for image, stage in re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.MULTILINE)}
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)[0] == "${BASE}"
    assert set(stages.values()) <= {"${BASE}", *stages}  # nothing else is pulled
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", dockerfile, re.MULTILINE)
    for name, service in services.items():
        build = service.get("build")
        assert isinstance(build, dict) and build["context"] == ".", name
        assert build["target"] in stages, name
        assert not service.get("image", "").count("/"), f"{name}: a registry's image"
    assert {services[name]["build"]["target"] for name in services} == {"server", "janus", "coturn"}
    assert services["worker"]["build"]["target"] == "server"


def test_the_mounted_configurations_are_the_repositorys(services: dict) -> None:
    mounted = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, mode = volume.split(":")
            assert source.startswith("./") and mode == "ro", (name, volume)
            assert (REPO / source).exists(), (name, source)
            mounted[target] = REPO / source
    assert mounted == {
        "/srtc/deploy/janus": REPO / "deploy" / "janus",
        "/srtc/deploy/turnserver.conf": REPO / "deploy" / "turnserver.conf",
    }
    for service in ("janus", "coturn"):
        assert services[service]["tmpfs"] == ["/run/srtc"]  # where start.sh writes the copies it changes


def test_the_environment_names_are_those_the_server_and_start_script_read(services: dict) -> None:
    server_source = (REPO / "src" / "srtc" / "server" / "__main__.py").read_text()
    for name in ("SRTC_OPERATOR_TOKEN", "SRTC_TURN_SECRET"):
        assert f'os.environ.get("{name}")' in server_source
        assert name in environment(services["server"])
    assert environment(services["coturn"]) == {"SRTC_TURN_SECRET"}
    start = START.read_text()
    for service in services.values():
        for name in environment(service):
            assert name.startswith("SRTC_") and (f"${{{name}" in start or name in server_source), name


def test_the_worker_joins_the_room_janus_serves(services: dict) -> None:
    command = services["worker"]["command"]
    assert command[:2] == ["srtc-start", "worker"]
    config, _ = parse_worker_args([*command[2:], "--port", "8090"])
    http = (REPO / "deploy" / "janus" / "janus.transport.http.jcfg").read_text()
    port = re.search(r"^\s*port = (\d+)", http, re.MULTILINE)
    assert port and config.janus_url == f"http://127.0.0.1:{port[1]}/janus"
    assert f"room-{config.room}:" in (REPO / "deploy" / "janus" / "janus.plugin.videoroom.jcfg").read_text()
    assert services["worker"]["depends_on"] == ["janus"]


@pytest.mark.parametrize("profile", [[], ["--profile", "sfu"]], ids=["default", "sfu"])
def test_docker_compose_accepts_the_file(profile: list[str]) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose (compose v1) is not installed")
    done = subprocess.run([compose, *profile, "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def start(tmp_path: Path, role: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """start.sh with stand-ins for python and turnserver that print what they were given (python runs the
    script start.sh gives it on stdin: the worker's port search)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program in ("python", "turnserver"):
        stand_in = bin_dir / program
        stand_in.write_text(
            f'#!/bin/sh\n[ "$1" = - ] && exec {sys.executable} -\n'
            'echo "$(basename "$0") $*"\n[ "$1" = -c ] && cat "$2"\nexit 0\n'
        )
        stand_in.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SRTC_DEPLOY": str(REPO / "deploy"), "SRTC_RUN": str(tmp_path)}
    return subprocess.run(
        ["bash", str(START), role, *args], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_coturn_gets_the_secret_from_the_environment_in_a_private_copy(tmp_path: Path) -> None:
    done = start(tmp_path, "coturn", {"SRTC_TURN_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"turnserver -c {tmp_path}/turnserver.conf"  # no secret in argv
    written = (tmp_path / "turnserver.conf").read_text()
    assert f"\nstatic-auth-secret={SECRET}\n" in written and "REPLACE-ME" not in written
    assert "\nlog-file=stdout\n" in written and "\nsyslog\n" not in written
    assert (tmp_path / "turnserver.conf").stat().st_mode & 0o077 == 0
    original = (REPO / "deploy" / "turnserver.conf").read_text().splitlines()
    assert len(written.splitlines()) == len(original)  # the rest as in the repository
    for secret in ("", "short", "REPLACE-ME-openssl-rand-hex-32", "has a space in it 0123456789"):
        refused = start(tmp_path, "coturn", {"SRTC_TURN_SECRET": secret} if secret else {})
        assert refused.returncode == 2 and "SRTC_TURN_SECRET" in refused.stderr, secret


def test_the_server_hands_out_the_stacks_coturn_when_told_where_clients_reach_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = start(tmp_path, "server", {})
    assert plain.stdout.split() == ["python", "-m", "server", "--host", "127.0.0.1", "--port", "8080"]
    env = {"SRTC_TURN_SECRET": SECRET, "SRTC_TURN_HOST": "turn.example.org", "SRTC_HOST": "0.0.0.0"}
    done = start(tmp_path, "server", env)
    argv = done.stdout.split()[3:]
    assert SECRET not in done.stdout
    monkeypatch.setenv("SRTC_TURN_SECRET", SECRET)
    config, _ = parse_command_line(argv)
    assert config.host == "0.0.0.0" and config.turn_secret == SECRET
    assert config.turn_urls == (
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
    )
    assert config.stun_urls == ("stun:turn.example.org:3478",)
    # The secret alone (coturn's, for the SFU stack) leaves the server without TURN instead of stopping it.
    alone = start(tmp_path, "server", {"SRTC_TURN_SECRET": SECRET})
    assert "--turn-url" not in alone.stdout and "SRTC_TURN_HOST" in alone.stderr


def test_a_worker_takes_a_free_stats_port_unless_given_one(tmp_path: Path) -> None:
    given = start(tmp_path, "worker", {}, "--room", "1234", "--port", "9999")
    assert given.stdout.split() == ["python", "-m", "server.worker", "--room", "1234", "--port", "9999"]
    first = start(tmp_path, "worker", {}, "--room", "1234").stdout.split()
    assert first[:-1] == ["python", "-m", "server.worker", "--room", "1234", "--port"]
    port = int(first[-1])
    assert 8090 <= port < 8190
    with socket.socket() as taken:  # another worker's stats listener
        taken.bind(("127.0.0.1", port))
        taken.listen()
        after = int(start(tmp_path, "worker", {}, "--room", "1234").stdout.split()[-1])
    assert after != port and (8090 <= after < 8190 or after == 0)
