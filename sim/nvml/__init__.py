"""Simulated NVML: a C ``libnvidia-ml.so.1`` for the real pynvml binding, and its state file."""
