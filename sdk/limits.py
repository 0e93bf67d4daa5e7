"""Message sizes the control plane, the agent and the SDK agree on.

gRPC clients accept 4 MiB per message unless told otherwise (grpcurl, buf curl and every
generated client included), so nothing the server sends is larger than that: list
responses are cut to fit (their next_page_token continues), and uploads and downloads are
streamed in chunks far below it.
"""

from __future__ import annotations

# What any gRPC client receives by default.
CLIENT_RECEIVE_BYTES = 4 << 20
# The server never sends a message larger than this...
MAX_SEND_BYTES = CLIENT_RECEIVE_BYTES
# ... and a list response stays below it with room to spare.
MAX_RESPONSE_BYTES = 3 << 20
# What the server receives: larger than any valid request, so that one too large gets a
# clear INVALID_ARGUMENT from the field it overflows rather than RESOURCE_EXHAUSTED.
MAX_RECEIVE_BYTES = 16 << 20
