"""One run: config to parts (assemble), the step loop, routed evaluation, checkpoints, sinks, the schedule."""
