"""What reelserve does, minus HTTP: the operations the API routes call, over the parts of one
running server.

`root.Reelserve` builds the parts (store, storage, signer, providers, models) and hands a worker
its own (`worker_parts`). Over them: `tasks` (submit, get, list, cancel, delete; `admission`
decides at submit whether a request can run here), `access` (API keys), `files` (signed file
links), `usage` (the usage report), and `views`, the pure renderers of the contract's JSON.
Nothing here reads a query string or knows a route but the file links' own.
"""

from reelserve.core.root import Reelserve

__all__ = ["Reelserve"]
