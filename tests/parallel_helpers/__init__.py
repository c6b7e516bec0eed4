"""Scripts the parallelism tests start in fresh processes (device counts are fixed per process)."""
