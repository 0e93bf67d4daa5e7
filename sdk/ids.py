"""Id rules the control plane, the agent and the SDK all apply (one copy: the control plane's
names module and the agent's configuration and recovery import them from here)."""

from __future__ import annotations

import re

#: Agent ids: the sanitized host name by default.
AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
#: Job ids, as the control plane makes them (`jobs/{id}`).
JOB_ID_RE = re.compile(r"^[0-9a-f]{16}$")
