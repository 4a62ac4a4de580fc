"""docker-compose.yml and the Dockerfile, checked statically (scripts/compose_smoke.sh runs them).

Every service's command must parse as a real ``sims`` (or ``dask``) command line, options
included; the bank volume, the paths inside it and the ports must agree between services.
"""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlparse

import click
import pytest
import typer
import yaml

from retrieval_service.local_cluster import SYNTHESIS_RESOURCE
from sims.cli import build_app

REPO = Path(__file__).resolve().parents[1]
SERVICES = {"retrieval", "synthesis-worker", "indexer", "dask-scheduler", "dask-worker", "dask-synthesis"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[str]]:
    """ENTRYPOINT, CMD and EXPOSE of the Dockerfile (exec form)."""
    out: dict[str, list[str]] = {}
    for line in (REPO / "Dockerfile").read_text().splitlines():
        m = re.match(r"^(ENTRYPOINT|CMD|EXPOSE)\s+(.*)$", line)
        if m:
            out[m[1]] = json.loads(m[2]) if m[2].startswith("[") else m[2].split()
    return out


class CommandLineError(Exception):
    """A command line that the CLI would refuse."""


def sims_root() -> click.Group:
    # typer ships its own copy of click, so its commands are not `click` classes: duck-typed below.
    return typer.main.get_command(build_app())  # type: ignore[return-value]


def dask_root() -> click.Group:
    group = click.Group("dask")
    for ep in entry_points(group="dask_cli"):
        group.add_command(ep.load(), ep.name)
    return group


def resolve(root: click.Group, prog: str, argv: list[str]) -> tuple[list[str], click.Context]:
    """Walk sub-commands, then parse the rest as the final command's options (invokes nothing).

    Raises :class:`CommandLineError` for an unknown command, an unknown option or a bad value.
    """
    cmd: click.Command = root
    path, rest = [prog], list(argv)
    while getattr(cmd, "commands", None) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        if name not in cmd.commands:
            raise CommandLineError(f"{' '.join(path)} has no command {name!r} (has {sorted(cmd.commands)})")
        cmd = cmd.commands[name]
        path.append(name)
    try:
        ctx = cmd.make_context(" ".join(path), rest, resilient_parsing=False)
    except Exception as e:  # click's (or typer's copy of click's) usage errors
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        raise CommandLineError(f"{' '.join(path)}: {message}") from e
    if getattr(cmd, "commands", None) and not getattr(cmd, "invoke_without_command", False):
        raise CommandLineError(f"{' '.join(path)} needs a sub-command")
    return path, ctx


def command_of(service: dict, dockerfile: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    return service.get("entrypoint", dockerfile["ENTRYPOINT"]), service.get("command", dockerfile["CMD"])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR-default}`` as their default, other ``${VAR...}`` as ``VAR``."""
    text = re.sub(r"\$\{(\w+):?-([^}]*)\}", r"\2", text)
    return re.sub(r"\$\{(\w+)[^}]*\}", r"\1", text)


def mounts(service: dict) -> dict[str, str]:
    """Mount target -> source of a service's volumes (short syntax)."""
    out = {}
    for spec in service.get("volumes", []):
        parts = interpolate(spec).split(":")
        out[parts[1]] = parts[0]
    return out


def test_services_and_image(compose: dict, dockerfile: dict[str, list[str]]) -> None:
    assert set(compose["services"]) == SERVICES
    assert "name" not in compose and "version" not in compose  # Compose 1.29 refuses `name`, v2 ignores `version`
    for name, svc in compose["services"].items():
        assert svc["image"] == "sims:latest" and svc["build"]["dockerfile"] == "Dockerfile", name
    assert dockerfile["ENTRYPOINT"] == ["sims"]
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_command_is_real(compose: dict, dockerfile: dict[str, list[str]], name: str) -> None:
    svc = compose["services"][name]
    entrypoint, argv = command_of(svc, dockerfile)
    assert all(isinstance(a, str) for a in argv), "commands must be exec-form lists of strings"
    assert entrypoint in (["sims"], ["dask"]), entrypoint
    root = sims_root() if entrypoint == ["sims"] else dask_root()
    if svc.get("x-sims-pending"):
        # Not written yet: never started by a plain `docker compose up`, and says why.
        assert svc.get("profiles") and "default" not in svc["profiles"]
        if argv[0] not in root.commands:
            pytest.skip(f"{name}: {svc['x-sims-pending']}")
    path, _ = resolve(root, entrypoint[0], argv)
    assert len(path) >= 2


def test_dockerfile_default_command(dockerfile: dict[str, list[str]]) -> None:
    path, ctx = resolve(sims_root(), "sims", dockerfile["CMD"])
    assert path == ["sims", "serve"] and ctx.params["bank"] == "/banks/camvid"  # a str: paths and URLs
    assert dockerfile["EXPOSE"] == ["8000"]


def test_bad_commands_are_caught() -> None:
    """The checker itself: a typo in a command or an option fails."""
    with pytest.raises(CommandLineError, match="no command 'serv'"):
        resolve(sims_root(), "sims", ["serv", "--bank", "/b"])
    with pytest.raises(CommandLineError, match="--bnak"):
        resolve(sims_root(), "sims", ["serve", "--bnak", "/b"])
    with pytest.raises(CommandLineError, match="--port"):
        resolve(sims_root(), "sims", ["serve", "--port", "http"])
    with pytest.raises(CommandLineError, match="sims index"):  # a group alone runs nothing
        resolve(sims_root(), "sims", ["index"])
    with pytest.raises(CommandLineError, match="--nthread"):
        resolve(dask_root(), "dask", ["worker", "tcp://x:1", "--nthread", "1"])
    with pytest.raises(CommandLineError, match="--dataset|Missing"):
        resolve(sims_root(), "sims", ["index", "build", "--root", "/d", "--out", "/b"])


def test_bank_volume_lines_up(compose: dict, dockerfile: dict[str, list[str]]) -> None:
    assert "bank" in compose["volumes"]
    services = compose["services"]
    serve = command_of(services["retrieval"], dockerfile)[1]
    build = command_of(services["indexer"], dockerfile)[1]
    served, built = option(serve, "--bank"), option(build, "--out")
    assert served == built == "/banks/camvid"
    for name in ("retrieval", "indexer", "dask-worker", "dask-synthesis"):
        assert mounts(services[name])["/banks"] == "bank", name
    assert services["retrieval"]["volumes"] == ["bank:/banks:ro"]  # the service only reads
    # Dask workers write image chunks and read the dataset at the indexer's paths; index builds
    # may land on the synthesis workers too, which also open the served bank at the service's path.
    assert mounts(services["dask-worker"]) == mounts(services["indexer"]) == mounts(services["dask-synthesis"])
    data_root = option(build, "--root")
    assert any(data_root.startswith(target + "/") for target in mounts(services["indexer"]))


def test_ports_line_up(compose: dict, dockerfile: dict[str, list[str]]) -> None:
    services = compose["services"]
    serve = command_of(services["retrieval"], dockerfile)[1]
    port = option(serve, "--port")
    assert option(serve, "--host") == "0.0.0.0"  # reachable from the other containers
    assert [p.split(":")[-1] for p in services["retrieval"]["ports"]] == [port]
    health = " ".join(services["retrieval"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in health
    # The worker retrieves from the service, and the service sends /synthesize to the worker.
    worker = services["synthesis-worker"]["command"]
    retrieval_url = urlparse(option(worker, "--service"))
    assert (retrieval_url.hostname, str(retrieval_url.port)) == ("retrieval", port)
    assert option(worker, "--host") == "0.0.0.0"
    assert services["synthesis-worker"]["profiles"] == ["http-workers"]  # the alternative to dask-synthesis
    worker_url = urlparse(services["retrieval"]["environment"]["SIMS_SYNTHESIS_URL"])
    assert (worker_url.hostname, str(worker_url.port)) == ("synthesis-worker", option(worker, "--port"))
    assert services["synthesis-worker"]["expose"] == [option(worker, "--port")]
    # The image copies the repository to /app (WORKDIR), shipped weights included.
    weights = option(worker, "--weights")
    assert "WORKDIR /app" in (REPO / "Dockerfile").read_text() and weights == "/app/weights/synthesis"
    assert f"127.0.0.1:{option(worker, '--port')}/readyz" in " ".join(
        services["synthesis-worker"]["healthcheck"]["test"]
    )
    scheduler_port = option(services["dask-scheduler"]["command"], "--port")
    address = f"tcp://dask-scheduler:{scheduler_port}"
    assert option(command_of(services["indexer"], dockerfile)[1], "--scheduler") == address
    assert services["dask-worker"]["command"][1] == address
    # /synthesize goes to the cluster's synthesis workers: one resource unit and one thread each.
    assert interpolate(services["retrieval"]["environment"]["SIMS_SYNTHESIS_CLUSTER"]) == address
    synthesis = services["dask-synthesis"]["command"]
    assert synthesis[:2] == ["worker", address]
    assert option(synthesis, "--resources") == f"{SYNTHESIS_RESOURCE}=1" and option(synthesis, "--nthreads") == "1"
    assert services["dask-synthesis"]["deploy"]["replicas"] >= 2
    dashboard = option(services["dask-scheduler"]["command"], "--dashboard-address").lstrip(":")
    assert [p.split(":")[-1] for p in services["dask-scheduler"]["ports"]] == [dashboard]


def test_service_environment_is_settings(compose: dict) -> None:
    """Every SIMS_* variable given to the service is a real setting (its own, or the networks' and
    queue's of SIMS_WORKER_*, which its synthesis backends read)."""
    from retrieval_service.api.settings import Settings
    from synthesis.worker.settings import ENV_PREFIX, WorkerSettings

    env = compose["services"]["retrieval"]["environment"]
    names = {"SIMS_" + f.upper() for f in Settings.model_fields}
    names |= {ENV_PREFIX + f.upper() for f in WorkerSettings.model_fields}
    assert set(env) <= names
    assert env["SIMS_API_KEY"].startswith("${SIMS_API_KEY:?")  # required, never a default key
    assert float(env["SIMS_WATCH_INTERVAL"]) > 0
