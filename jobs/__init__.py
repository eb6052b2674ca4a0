"""Job state shared by the API (`service/`) and the workers (`worker/`): the stored record, its
status transitions, the stores, the queue, fair scheduling, retention and the settings both
sides read. Nothing here speaks HTTP or runs a model."""
