"""The boto3 workflow of AWS's blog post announcing AgentCore session storage and execute command,
against a real Berth. The snippets keep the post's shape; only the endpoint and the credentials
differ (endpoint_url, and the AWS_* variables of the environment).

Run by test/python-blog-workflow.test.ts, which builds examples/python-starlette-agent's zip
into Berth's artifact store as s3://agents/$BLOG_AGENT_PREFIX and sets the environment
berth_env.py reads.
"""

import json
import os
import unittest
import uuid

import boto3

from berth_env import ENDPOINT, REGION, wait_for_status
from tampered_invoke import send_signed_then_tampered

MOUNT_PATH = "/mnt/workspace"

WRITE_PROJECT = r"""
set -e
mkdir -p /mnt/workspace/project && cd /mnt/workspace/project
cat > calculator.py <<'PY'
def add(a, b):
    return a + b
PY
cat > test_calculator.py <<'PY'
import unittest
from calculator import add

class AddTest(unittest.TestCase):
    def test_adds(self):
        self.assertEqual(add(2, 3), 5)
PY
printf '__pycache__/\n' > .gitignore
ls
"""
RUN_TESTS = "cd /mnt/workspace/project && python3 -m unittest -v"
COMMIT = (
    "cd /mnt/workspace/project && git init -q -b main && git add -A"
    " && git -c user.name=Agent -c user.email=agent@example.com"
    " commit -q -m 'Add calculator with a test' && git log --format=%s"
)


def read_events(response):
    """The post's reading of a stream: line by line, keeping what follows "data: "."""
    events = []
    for line in response["response"].iter_lines(chunk_size=10):
        if line:
            line = line.decode("utf-8")
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


class CommandResult:
    def __init__(self):
        self.stdout = ""
        self.stderr = ""
        self.exit_code = None
        self.status = None


class BlogWorkflow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The post's two clients; endpoint_url is the one addition.
        cls.control_client = boto3.client(
            "bedrock-agentcore-control", region_name=REGION, endpoint_url=ENDPOINT
        )
        cls.client = boto3.client("bedrock-agentcore", region_name=REGION, endpoint_url=ENDPOINT)

        response = cls.control_client.create_agent_runtime(
            agentRuntimeName="blog_agent_%d" % os.getpid(),
            agentRuntimeArtifact={
                "codeConfiguration": {
                    "code": {"s3": {"bucket": "agents", "prefix": os.environ["BLOG_AGENT_PREFIX"]}},
                    "runtime": "PYTHON_3_11",
                    "entryPoint": ["main.py"],
                }
            },
            roleArn="arn:aws:iam::123456789012:role/AgentRuntimeRole",
            networkConfiguration={"networkMode": "PUBLIC"},
            filesystemConfigurations=[{"sessionStorage": {"mountPath": MOUNT_PATH}}],
        )
        cls.agent_runtime_arn = response["agentRuntimeArn"]
        runtime = wait_for_status(cls.control_client, response["agentRuntimeId"])
        if runtime["status"] != "READY":
            raise AssertionError("the runtime is %s: %s" % (runtime["status"], runtime))

    def invoke(self, session_id, payload, **options):
        return self.client.invoke_agent_runtime(
            agentRuntimeArn=self.agent_runtime_arn,
            runtimeSessionId=session_id,
            payload=json.dumps(payload).encode(),
            **options,
        )

    def invoke_json(self, session_id):
        response = self.invoke(session_id, {"prompt": "What is in the workspace?"})
        return json.loads(response["response"].read())

    def run_command(self, session_id, command, timeout=60):
        """The post's loop over the command's event stream, collecting instead of printing."""
        response = self.client.invoke_agent_runtime_command(
            agentRuntimeArn=self.agent_runtime_arn,
            runtimeSessionId=session_id,
            body={"command": command, "timeout": timeout},
        )
        result = CommandResult()
        for event in response["stream"]:
            if "chunk" in event:
                chunk = event["chunk"]
                if "contentDelta" in chunk:
                    delta = chunk["contentDelta"]
                    result.stdout += delta.get("stdout", "")
                    result.stderr += delta.get("stderr", "")
                if "contentStop" in chunk:
                    result.exit_code = chunk["contentStop"].get("exitCode")
                    result.status = chunk["contentStop"].get("status")
        return result

    def assert_completed(self, result):
        self.assertEqual((result.status, result.exit_code), ("COMPLETED", 0), result.stderr)

    def test_invoke_answers_json(self):
        session_id = str(uuid.uuid4())
        response = self.invoke(session_id, {"prompt": "Hello, agent"})
        self.assertEqual(response["contentType"], "application/json")
        self.assertEqual(response["runtimeSessionId"], session_id)
        answer = json.loads(response["response"].read())
        self.assertEqual(answer["reply"], 'turn 1: you said "Hello, agent"')
        self.assertEqual(answer["session"], session_id)
        self.assertEqual(answer["workspace"], [], "a new session's storage is empty")

    def test_invoke_streams_server_sent_events(self):
        session_id = str(uuid.uuid4())
        asked_in_payload = self.invoke(session_id, {"prompt": "stream it", "stream": True})
        asked_with_accept = self.invoke(
            session_id, {"prompt": "stream it"}, accept="text/event-stream"
        )
        for response in (asked_in_payload, asked_with_accept):
            self.assertIn("text/event-stream", response["contentType"])
            events = read_events(response)
            words = "".join(event["delta"] for event in events if "delta" in event)
            self.assertEqual(words.strip(), events[-1]["reply"])
            self.assertTrue(events[-1]["done"])
        self.assertEqual(events[-1]["turns"], 2, "both invocations reached the same session")

    def test_command_streams_output_and_exit_code(self):
        session_id = str(uuid.uuid4())
        result = self.run_command(session_id, "echo to stdout; echo to stderr >&2; exit 3")
        self.assertEqual((result.stdout, result.stderr), ("to stdout\n", "to stderr\n"))
        self.assertEqual((result.exit_code, result.status), (3, "COMPLETED"))

    def test_command_past_its_timeout_ends_timed_out(self):
        session_id = str(uuid.uuid4())
        result = self.run_command(session_id, "echo started; sleep 5; echo finished", timeout=1)
        self.assertEqual(result.status, "TIMED_OUT")
        self.assertNotEqual(result.exit_code, 0)
        self.assertEqual(result.stdout, "started\n")

    def test_write_test_commit_stop_and_resume(self):
        session_id = str(uuid.uuid4())
        self.assertEqual(self.invoke_json(session_id)["turns"], 1)

        written = self.run_command(session_id, WRITE_PROJECT)
        self.assert_completed(written)
        self.assertEqual(written.stdout.split(), ["calculator.py", "test_calculator.py"])
        tested = self.run_command(session_id, RUN_TESTS)
        self.assert_completed(tested)
        self.assertRegex(tested.stderr, r"(?m)^OK$")
        committed = self.run_command(session_id, COMMIT)
        self.assert_completed(committed)
        self.assertEqual(committed.stdout, "Add calculator with a test\n")
        # Outside session storage: gone once the session's environment is.
        self.assert_completed(self.run_command(session_id, "touch /tmp/before-the-stop"))

        self.client.stop_runtime_session(
            agentRuntimeArn=self.agent_runtime_arn,
            runtimeSessionId=session_id,
            qualifier="DEFAULT",
        )

        # The same session id: a new environment (the agent's memory and /tmp are new) that
        # mounts the same storage, files and git history exactly as left.
        resumed = self.invoke_json(session_id)
        self.assertEqual(resumed["turns"], 1, "a new agent process after the stop")
        self.assertEqual(resumed["workspace"], ["project"])
        after = self.run_command(
            session_id,
            "test ! -e /tmp/before-the-stop && cd /mnt/workspace/project"
            " && git log --format=%s && git status --porcelain && python3 -m unittest",
        )
        self.assert_completed(after)
        self.assertEqual(after.stdout, "Add calculator with a test\n", "the log, and a clean tree")
        self.assertRegex(after.stderr, r"(?m)^OK$")

    def test_body_changed_after_signing_is_refused_before_the_agent(self):
        session_id = str(uuid.uuid4())
        answers = send_signed_then_tampered(
            ENDPOINT,
            self.agent_runtime_arn,
            session_id,
            json.dumps({"prompt": "original"}).encode(),
            json.dumps({"prompt": "tampered"}).encode(),
        )
        self.assertEqual(answers["original"]["status"], 200, answers["original"]["body"])
        self.assertEqual(json.loads(answers["original"]["body"])["turns"], 1)
        self.assertEqual(answers["tampered"]["status"], 403)
        self.assertEqual(answers["tampered"]["errorType"], "InvalidSignatureException")
        self.assertEqual(self.invoke_json(session_id)["turns"], 2, "the agent never saw it")


if __name__ == "__main__":
    unittest.main()
