"""Replay recorded sensor files, simulate devices, and the one-command demo.

``replay.pacing`` decides when each message goes out, ``replay.simulate`` makes synthetic
devices, ``replay.publisher`` sends samples per the service's MQTT contract,
``replay.compare`` scores the service's predictions against the true labels, and
``replay.demo`` puts broker, service and devices together. ``replay.cli`` registers
``harstream replay``, ``harstream simulate`` and ``harstream demo``.
"""
