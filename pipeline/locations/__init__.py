"""Code locations smaller than ``pipeline.definitions``, for the daemon harnesses of the tests and
benchmarks: each holds one path of the pipeline, so that no other stage starts beside it. They
live outside ``pipeline/defs`` because ``load_defs`` loads every module there."""
