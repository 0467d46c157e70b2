"""Container images for local workers: pulled from their registry, cached by digest under
``$TUSK_HOME/images``, unpacked once into a read-only root that bubblewrap shows as ``/``.

Pure parts: ``reference`` (names), ``manifests`` (manifest lists, platforms, configs),
``layers`` (tar layers applied to a root). Adapters: ``registry`` (the OCI distribution
API over aiohttp), ``store`` (the cache on disk), ``archive`` (``docker save`` / OCI
archives). docs/images.md is the design.
"""
