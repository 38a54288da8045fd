"""``harstream dashboard``: a live web page of the service, its devices and its other families.

An ordinary MQTT client of the service's broker (:mod:`.feed`) folds what the service
publishes into a bounded in-memory view (:mod:`.board`); a small HTTP server (:mod:`.server`)
serves the page from ``static/`` and pushes batched changes to open pages as server-sent
events. The page never talks to the broker.
"""
