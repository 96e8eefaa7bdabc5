"""Training: the engine and its checkpoints, several processes, the teachers (live, cached, from files), the run directory, trackers and the CPU thread share."""
