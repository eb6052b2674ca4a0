"""The Celery worker: takes prune jobs off the queue and runs each in a child process."""
