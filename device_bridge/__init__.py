"""Device bridge: MQTT device traffic mapped into the gateway's policy layer.

Not built yet: it arrives with its own issue (see ../shared/roadmap.md, item 5).  It will use
``gateway``'s config model and policy layer, never the reverse.
"""
