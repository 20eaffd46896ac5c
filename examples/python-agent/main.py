"""An AgentCore agent using only Python's standard library: POST /invocations and GET /ping on 8080."""
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

turns = []


class Agent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path != "/ping":
            self.send_error(404)
            return
        self.reply(200, {"status": "Healthy", "time_of_last_update": int(time.time())})

    def do_POST(self):
        if self.path != "/invocations":
            self.send_error(404)
            return
        length = int(self.headers.get("content-length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        turns.append(payload.get("prompt", ""))
        session = self.headers.get("x-amzn-bedrock-agentcore-runtime-session-id")
        self.reply(200, {"reply": f"python agent heard: {payload.get('prompt', '')}", "turns": len(turns), "session": session})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print(format % args, flush=True)


ThreadingHTTPServer(("0.0.0.0", 8080), Agent).serve_forever()
