"""Backend handlers: what answers an exchange once the pipeline's stages let it through.

Each is a :class:`gateway.exchange.Handler` (``on_head``, ``on_body``, ``on_request_end``,
``on_timeout``, ``on_abort``, ``on_client_paused``, ``timeout_s``), called by the client
connection.
"""
