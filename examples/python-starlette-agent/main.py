"""An AgentCore agent built on Starlette and Uvicorn, packaged as a code zip with its dependencies.

POST /invocations takes a JSON payload and answers JSON, or server-sent events when the payload
says {"stream": true} or the caller accepts text/event-stream. GET /ping answers the health
check. Both on 0.0.0.0:8080, as AgentCore's HTTP contract asks.

The agent keeps the conversation in memory (one session, one process) and looks at its session
storage, so a caller can see what survives a stop: the files do, the memory does not.
"""

import json
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

# Where the runtime's filesystemConfigurations mount the session storage.
WORKSPACE = os.environ.get("WORKSPACE", "/mnt/workspace")
SESSION_HEADER = "x-amzn-bedrock-agentcore-runtime-session-id"

turns = []
started_at = int(time.time())


def workspace_files():
    """The names at the top of the session storage (empty when the runtime has none)."""
    try:
        return sorted(os.listdir(WORKSPACE))
    except FileNotFoundError:
        return []


def wants_stream(request, payload):
    return payload.get("stream") is True or "text/event-stream" in request.headers.get("accept", "")


async def server_sent_events(answer):
    """The reply word by word, then the whole answer, as `data: {...}` frames."""
    for word in answer["reply"].split(" "):
        yield "data: %s\n\n" % json.dumps({"delta": word + " "})
    yield "data: %s\n\n" % json.dumps({"done": True, **answer})


async def invocations(request: Request):
    try:
        payload = json.loads(await request.body() or b"{}")
    except ValueError as error:
        return JSONResponse({"error": "the payload is not JSON: %s" % error}, status_code=400)
    if not isinstance(payload, dict):
        return JSONResponse({"error": "the payload must be a JSON object"}, status_code=400)
    prompt = str(payload.get("prompt", ""))
    turns.append(prompt)
    answer = {
        "reply": "turn %d: you said %s" % (len(turns), json.dumps(prompt)),
        "turns": len(turns),
        "session": request.headers.get(SESSION_HEADER),
        "workspace": workspace_files(),
    }
    if wants_stream(request, payload):
        return StreamingResponse(server_sent_events(answer), media_type="text/event-stream")
    return JSONResponse(answer)


async def ping(request: Request):
    return JSONResponse({"status": "Healthy", "time_of_last_update": started_at})


app = Starlette(
    routes=[
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="0.0.0.0", port=8080)
