"""Backend handlers: what answers an exchange once the pipeline's stages let it through.

A handler has one interface, called by the client connection:
``on_head(ex)``, ``on_body(ex, chunk)``, ``on_request_end(ex)``, ``on_timeout(ex)``,
``on_abort(ex)``, ``on_client_paused(ex, paused)`` and the attribute ``timeout_s``.
"""
