"""The local Cloud Batch (batch.googleapis.com v1) on 127.0.0.1, for google-cloud-batch's REST
transport: `BatchServiceClient(transport="rest", client_options={"api_endpoint": url})`.

- `models.Batch`: jobs, tasks, operations; each task runs on its own VM of the local Compute
  Engine (in process), its runnables as that VM's startup script (agent.py).
- `rest.BatchServer`: the HTTP side (routes, auth, the request log), on its own port, announced
  as `batch` in `<home>/local/service.json`.
- `validation`, `schema`, `filters`: the request rules, the v1 discovery schema, list filters.

Preempting a task's Spot VM: `Control(endpoints).preempt_batch_task(location, job, index)`.
"""

from __future__ import annotations


def serve(state_dir, compute, request_log=None, is_user=None, token_scopes=None):
    """(Batch, BatchServer): the model over COMPUTE and its server (not yet serving)."""
    from infra.local.batch.models import Batch
    from infra.local.batch.rest import BatchServer

    batch = Batch(state_dir, compute)
    return batch, BatchServer(batch, request_log=request_log, is_user=is_user, token_scopes=token_scopes)
