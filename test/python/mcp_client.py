"""Drives an MCP server deployed on Berth with the Python MCP SDK's own client (streamable HTTP),
each request signed with SigV4 for bedrock-agentcore, as an MCP client of AgentCore does. The
runtime ARN is the only argument; prints one JSON object of what it saw (read by
test/protocols.test.ts). Run with the MCP SDK on PYTHONPATH and berth_env's environment."""

import asyncio
import json
import sys
import urllib.parse

import botocore.session
import httpx2
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from berth_env import ENDPOINT, REGION

RUNTIME_SESSION_HEADER = "x-amzn-bedrock-agentcore-runtime-session-id"


class SigV4(httpx2.Auth):
    """Signs each request as botocore signs AgentCore's: service bedrock-agentcore, no
    x-amz-content-sha256 (the server hashes the body it received)."""

    requires_request_body = True

    def __init__(self):
        self.credentials = botocore.session.get_session().get_credentials()

    def auth_flow(self, request):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "connection"}
        signed = AWSRequest(
            method=request.method, url=str(request.url), data=request.content, headers=headers
        )
        SigV4Auth(self.credentials, "bedrock-agentcore", REGION).add_auth(signed)
        for name, value in signed.headers.items():
            request.headers[name] = value
        yield request


def text_of(result):
    """A tool result as the tool returned it: its structured content, else its text (as JSON if
    it is)."""
    structured = result.structured_content
    if isinstance(structured, dict):
        return structured.get("result", structured)
    text = result.content[0].text
    try:
        return json.loads(text)
    except ValueError:
        return text


async def main(arn):
    url = "%s/runtimes/%s/invocations?qualifier=DEFAULT" % (
        ENDPOINT,
        urllib.parse.quote(arn, safe=""),
    )
    exchanges = []

    async def sent(response):
        request = response.request
        if request.method != "POST":
            return  # the SDK's optional GET stream and DELETE: not InvokeAgentRuntime
        body = json.loads(request.content or b"{}")
        exchanges.append(
            {
                "method": body.get("method"),
                "status": response.status_code,
                "sentMcpSessionId": request.headers.get("mcp-session-id"),
                "answeredMcpSessionId": response.headers.get("mcp-session-id"),
                "answeredRuntimeSessionId": response.headers.get(RUNTIME_SESSION_HEADER),
                "contentType": response.headers.get("content-type"),
            }
        )

    progress = []

    async def on_progress(done, total, message):
        progress.append({"progress": done, "total": total, "message": message})

    hooks = {"response": [sent]}
    async with httpx2.AsyncClient(auth=SigV4(), timeout=60, event_hooks=hooks) as http:
        async with streamable_http_client(url, http_client=http, terminate_on_close=False) as (
            read,
            write,
        ):
            async with ClientSession(read, write) as session:
                initialized = await session.initialize()
                tools = await session.list_tools()
                added = await session.call_tool("add", {"a": 2, "b": 3})
                counted = await session.call_tool("count", {"to": 3}, progress_callback=on_progress)
                first = await session.call_tool("facts", {})
                second = await session.call_tool("facts", {})
    print(
        json.dumps(
            {
                "server": initialized.server_info.name,
                "tools": sorted(tool.name for tool in tools.tools),
                "added": text_of(added),
                "counted": text_of(counted),
                "progress": progress,
                "facts": [text_of(first), text_of(second)],
                "exchanges": exchanges,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
