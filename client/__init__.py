"""pullback-client: snapshot this machine's services into one verified archive the server pulls.

``run`` (:mod:`.run`) runs every service's plugins through their stages (:mod:`.stages`)
into one archive, verifies and publishes it, and keeps a few locally; ``serve``
(:mod:`.serve`) is the only thing the server's SSH key may run; ``restore``
(:mod:`.restore`) puts a service back from a restored snapshot. The package imports
:mod:`pullback.common` and :mod:`pullback.plugins`, never the server. See
docs/architecture.md.
"""
