"""The asap-protocol package's own server, as the benchmark's reference: `create_app` with
the package's default registry (its echo handler for task.request), on uvicorn.

Usage: python reference_server.py <port>

Rate limits are lifted (the package limits a WebSocket to 10 messages/s by default) so
that the benchmark measures handling, as with switchboard.
"""

import sys

import uvicorn
from asap.models.entities import Capability, Endpoint, Manifest, Skill
from asap.transport.server import create_app

port = int(sys.argv[1])
manifest = Manifest(
    id="urn:asap:agent:reference",
    name="reference",
    version="1.0.0",
    description="asap-protocol reference server with its echo handler",
    capabilities=Capability(asap_version="0.1", skills=[Skill(id="echo", description="echo")]),
    endpoints=Endpoint(asap=f"http://127.0.0.1:{port}/asap"),
)
app = create_app(manifest, websocket_message_rate_limit=None, rate_limit="100000000/minute")
uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")
