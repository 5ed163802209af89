"""`python cli.py local start|stop|status|reset|env`: call infra.local.service and print."""

from __future__ import annotations

import json

import click

from infra.local import service


def _print(data: dict, json_output: bool, lines: list[str]) -> None:
    if json_output:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)


def _endpoint_lines(data: dict) -> list[str]:
    return [
        f"  Compute Engine  {data['compute']}",
        f"  Cloud Storage   {data['storage']}",
        *([f"  Cloud Batch     {data['batch']}"] if data.get("batch") else []),
        f"  control         {data['control']}",
        f"  pid {data['pid']}, state in {data['home']}/local",
    ]


def start(json_output: bool = False) -> None:
    service.ensure_running()
    data = service.status()
    _print(data, json_output, ["local cloud running"] + _endpoint_lines(data))


def stop(json_output: bool = False) -> None:
    result = service.stop()
    msg = f"local cloud stopped (pid {result['pid']})" if result["stopped"] else "local cloud was not running"
    _print(result, json_output, [msg])


def status(json_output: bool = False) -> None:
    data = service.status()
    if data["running"]:
        lines = ["local cloud running"] + _endpoint_lines(data)
    else:
        lines = [f"local cloud not running (state in {data['home']}/local); any command starts it, or `local start`"]
    _print(data, json_output, lines)


def reset(json_output: bool = False, yes: bool = False) -> None:
    data = service.status()
    if not yes and not json_output:
        click.confirm(f"Stop the local cloud and delete its VMs, buckets and logs in {data['home']}/local?", abort=True)
    elif not yes:
        from infra.errors import UsageError

        raise UsageError("local reset deletes every local VM and bucket", hint="pass --yes to confirm")
    result = service.reset()
    _print(result, json_output, [f"local cloud reset: stopped, {result['wiped']} wiped"])


def env_vars() -> dict[str, str]:
    """What third-party tools need to reach the local cloud (starting it if needed)."""
    ep = service.ensure_running()
    root = service.status()["token_file"]
    return {
        "FERRY_LOCAL_TOKEN": ep.token or "",                 # a bearer token: any Google client's OAuth access token
        "FERRY_LOCAL_COMPUTE": ep.compute,                   # compute_v1 clients: client_options api_endpoint
        "STORAGE_EMULATOR_HOST": ep.storage,                 # google-cloud-storage, gcsfs
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",        # else gcsfs tries gRPC first, 60 s a call
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": ep.compute + "/compute/v1/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": ep.storage + "/storage/v1/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": root,             # gcloud sends the token from this file
        "CLOUDSDK_CORE_PROJECT": ep.project,
        "FERRY_BACKEND": "local",                            # ferry itself stays local with a project set
    }


def env(json_output: bool = False) -> None:
    """`eval "$(python cli.py local env)"`: the exports, shell-quoted (or JSON)."""
    import shlex

    values = env_vars()
    if json_output:
        click.echo(json.dumps(values, indent=2))
        return
    click.echo("# the local Google Cloud, for third-party tools: eval \"$(python cli.py local env)\"")
    for key, value in values.items():
        click.echo(f"export {key}={shlex.quote(value)}")
