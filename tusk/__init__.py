"""Tusk's applications: the ``tusk`` command (``tusk.cli``) and the embedded runner (``tusk.embedded``)."""
