"""Load balance channels: the node's shared health table and the active health checker."""
