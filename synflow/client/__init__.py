"""The Python client of the SynFlow pruning service (httpx; no torch, no service code).

    from synflow.client import Client

    # url and api_key default to $SYNFLOW_URL and $SYNFLOW_API_KEY
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit("model.pt", sparsity=0.9, input_shape=(1, 3, 224, 224))
        job = client.wait(job.id)                  # progress bar on a terminal
        client.download(job.id, "pruned/")         # masks, weights, model, report

Errors the service answers, and a service that cannot be reached, raise `ProblemError`.
`verify_webhook(headers, body, secret)` checks a job's webhook (raises
`WebhookVerificationError` unless it is genuine and fresh).
"""

from synflow.client.client import DEFAULT_URL, Client, JobTimeout, Pruned, prune_remote
from synflow.client.errors import UNREACHABLE, ProblemError
from synflow.client.models import Callback, Job, JobLinks, JobPage, Problem, Progress
from synflow.webhooks import WebhookVerificationError
from synflow.webhooks import verify as verify_webhook

__all__ = [
    "DEFAULT_URL",
    "UNREACHABLE",
    "Callback",
    "Client",
    "Job",
    "JobLinks",
    "JobPage",
    "JobTimeout",
    "Problem",
    "ProblemError",
    "Progress",
    "Pruned",
    "WebhookVerificationError",
    "prune_remote",
    "verify_webhook",
]
