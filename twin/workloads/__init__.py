"""Workloads: the inference service, the client load generator and their statistics.

Sits above :mod:`twin.emulation` and never imports Mininet: the server and the
load generator are plain processes that run inside whatever network namespace
(or container) they are started in.

- :mod:`twin.workloads.models`: builds the small ONNX models the services run.
- :mod:`twin.workloads.protocol`: pure request/state encoding shared by both ends.
- :mod:`twin.workloads.server`: the HTTP inference server (``python -m twin.workloads.server``).
- :mod:`twin.workloads.loadgen`: open-loop Poisson clients (``python -m twin.workloads.loadgen``).
- :mod:`twin.workloads.stats`: percentiles, jitter, goodput and interruptions from request records.
"""
