"""Container images for local workers: pulled from their registry, cached by digest under
``$TUSK_HOME/images``, unpacked once into a read-only root that bubblewrap shows as ``/``.
Used by the scheduler (pulls), workers (roots) and the CLI (``tusk image``).

Pure parts: ``reference`` (names), ``manifests`` (manifest lists, platforms, configs),
``credentials`` (Docker config.json), ``users`` (User → ids), ``layers`` (tar layers
applied to a root). Adapters: ``registry`` (the OCI distribution API over aiohttp),
``store`` (the cache on disk), ``pull`` (registry → cache), ``archive`` (``docker save``
/ OCI archives). docs/images.md is the design.
"""
