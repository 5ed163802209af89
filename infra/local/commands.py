"""`python cli.py local start|stop|status|reset`: call infra.local.service and print."""

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
