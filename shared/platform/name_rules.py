"""What a name and a ref look like, and how long free text may be: the patterns the HTTP
layer declares in its API schemas (``shared.platform.http``) and ``shared.api.names``
checks with. Kept here, below both, so the platform needs nothing from the API room.
"""

from __future__ import annotations

import re

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
COMMIT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# A ref is a branch name or commit id followed by any number of ^ / ^N / ~N suffixes.
ANCESTRY_RE = re.compile(r"^(?P<base>[A-Za-z0-9_-]{1,63})(?P<suffix>(?:[\^~][0-9]*)*)$")
# Longest free text (a description, a commit's error) Tusk stores.
MAX_TEXT_CHARS = 64 * 1024
