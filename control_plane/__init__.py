"""Control plane: the REST admin (Starlette) for every resource of the configuration document.

Not built yet: it arrives with its own issue (see ../shared/roadmap.md, item 4).  It will import
``gateway`` (config model, snapshot compiler), never the reverse.
"""
