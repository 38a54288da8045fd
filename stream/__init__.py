"""The MQTT streaming service: decode, per-id buffers, batched jit inference, encode, publish.

``stream.routes`` defines the generic route a model family plugs in; ``stream.service``
runs a set of routes against a broker; ``stream.cli`` is ``harstream serve``.
"""
