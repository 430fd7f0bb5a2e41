"""A run's files and records: checkpoints, config.json, metrics, the workdir lock, preemption, paths,
and the binaries' one-line errors."""
