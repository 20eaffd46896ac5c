"""A test MCP server, written with the Python MCP SDK (installed beside it at test time): streamable
HTTP at /mcp on PORT (8000 in a session), stateless unless MCP_STATEFUL=1. Not an example to copy."""

import os

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("berth-test-mcp")
calls = 0


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b


@server.tool()
async def count(to: int, ctx: Context) -> str:
    """Counts to `to`, reporting each step as progress before the result."""
    for step in range(1, to + 1):
        await ctx.report_progress(step, to, f"counted {step}")
    return f"counted to {to}"


@server.tool()
def facts(ctx: Context) -> dict:
    """What this server process saw of the request: which process, and the session headers."""
    global calls
    calls += 1
    headers = ctx.headers or {}
    return {
        "pid": os.getpid(),
        "calls": calls,
        "mcpSessionId": headers.get("mcp-session-id"),
        "runtimeSessionId": headers.get("x-amzn-bedrock-agentcore-runtime-session-id"),
    }


if __name__ == "__main__":
    server.run(
        "streamable-http",
        host="0.0.0.0",
        port=int(os.environ.get("PORT", "8000")),
        stateless_http=os.environ.get("MCP_STATEFUL") != "1",
    )
