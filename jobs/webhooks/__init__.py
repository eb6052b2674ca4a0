"""Job webhooks: when a job ends, its job object is POSTed to its `callback_url`, signed per
Standard Webhooks (synflow/webhooks.py), at least once, from the workers' parent processes.

- addresses.py  which addresses a webhook may reach (the SSRF guard) and the allow-list
- target.py     a `callback_url` checked (at submit, without DNS) and resolved (at delivery)
- delivery.py   one attempt: POST to the checked address, no redirects, bounded time and size
- outbox.py     the delivery state on the job record: claim an attempt, record its outcome
- courier.py    deliver every webhook that is due (the workers' courier thread runs it)
"""
