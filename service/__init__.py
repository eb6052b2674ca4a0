"""The HTTP service: request validation, auth, job records, artifact downloads.

Never imports torch: models are loaded only by the worker's child process.
"""
