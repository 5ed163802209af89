"""What every job command shares: ferry's progress lines, and the bucket."""

from __future__ import annotations

import click

from infra.errors import CloudError, FerryError


def say(message: str) -> None:
    try:
        click.echo(f"ferry: {message}", err=True)
    except OSError:  # the terminal is gone (SIGHUP): the teardown goes on regardless
        pass


def bucket_of(settings, create: bool = True):
    from infra.clients import storage_client

    client = storage_client(settings)
    bucket = client.bucket(settings.bucket)
    if create:
        try:
            if client.lookup_bucket(settings.bucket) is None:
                client.create_bucket(settings.bucket, location=None if settings.is_local else settings.region)
        except FerryError:
            raise
        except Exception as exc:
            raise CloudError(f"bucket gs://{settings.bucket}: {exc.__class__.__name__}: {exc}",
                             hint="pass --bucket or set FERRY_BUCKET to a bucket you can write") from None
    return bucket
