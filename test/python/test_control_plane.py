"""An AgentCore user's control-plane workflow with boto3, against a real Berth.

Run by test/python-control-plane.test.ts, which starts Berth and sets the environment
berth_env.py reads. Invoke is not exercised here (the data plane has its own tests).
"""

import datetime
import os
import re
import unittest

from berth_env import client, code_artifact, upload_code, wait_for_status

RUN = os.getpid()
MOUNT = "/mnt/workspace"
ROLE = "arn:aws:iam::123456789012:role/agent"


def field_names(raised):
    """The members a ValidationException's fieldList names, from assertRaises' context."""
    return [field["name"] for field in raised.exception.response.get("fieldList", [])]


class Names:
    counter = 0

    @classmethod
    def unique(cls, base):
        cls.counter += 1
        return "%s_%d_%d" % (base, RUN, cls.counter)


class ControlPlaneWorkflow(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.control = client("bedrock-agentcore-control")
        cls.prefix = "py-agent-%d" % RUN
        upload_code("agents", cls.prefix, {"main.js": "// an agent\n"})

    def create_runtime(self, **overrides):
        request = {
            "agentRuntimeName": Names.unique("py"),
            "agentRuntimeArtifact": code_artifact(self.prefix),
            "roleArn": ROLE,
            "networkConfiguration": {"networkMode": "PUBLIC"},
        }
        request.update(overrides)
        return self.control.create_agent_runtime(**request)

    def test_runtime_lifecycle_versions_endpoints_and_tags(self):
        control = self.control
        created = self.create_runtime(
            description="made with boto3",
            environmentVariables={"MODEL": "small"},
            filesystemConfigurations=[{"sessionStorage": {"mountPath": MOUNT}}],
            tags={"team": "agents", "berth:session-storage-on-version-change": "keep"},
        )
        runtime_id = created["agentRuntimeId"]
        self.assertEqual(created["ResponseMetadata"]["HTTPStatusCode"], 202)
        self.assertEqual(created["status"], "CREATING")
        self.assertEqual(created["agentRuntimeVersion"], "1")
        self.assertRegex(runtime_id, r"^py_\d+_\d+-[a-zA-Z0-9]{10}$")
        self.assertEqual(
            created["agentRuntimeArn"],
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/" + runtime_id,
        )
        self.assertIsInstance(created["createdAt"], datetime.datetime)

        got = wait_for_status(control, runtime_id)
        self.assertEqual(got["status"], "READY", got.get("failureReason"))
        self.assertEqual(
            got["filesystemConfigurations"], [{"sessionStorage": {"mountPath": MOUNT}}]
        )
        self.assertEqual(got["agentRuntimeArtifact"], code_artifact(self.prefix))
        self.assertEqual(got["environmentVariables"], {"MODEL": "small"})
        self.assertEqual(got["description"], "made with boto3")
        self.assertIsInstance(got["lastUpdatedAt"], datetime.datetime)

        # Tags given at create are the resource's tags.
        arn = created["agentRuntimeArn"]
        self.assertEqual(
            control.list_tags_for_resource(resourceArn=arn)["tags"],
            {"team": "agents", "berth:session-storage-on-version-change": "keep"},
        )

        # A new version, listed with the paginator; the old one still readable.
        updated = control.update_agent_runtime(
            agentRuntimeId=runtime_id,
            agentRuntimeArtifact=code_artifact(self.prefix),
            roleArn=ROLE,
            networkConfiguration={"networkMode": "PUBLIC"},
            filesystemConfigurations=[{"sessionStorage": {"mountPath": MOUNT}}],
            description="version 2",
        )
        self.assertEqual(updated["ResponseMetadata"]["HTTPStatusCode"], 202)
        self.assertEqual(updated["agentRuntimeVersion"], "2")
        self.assertEqual(wait_for_status(control, runtime_id)["status"], "READY")
        pages = list(
            control.get_paginator("list_agent_runtime_versions").paginate(
                agentRuntimeId=runtime_id, PaginationConfig={"PageSize": 1}
            )
        )
        self.assertEqual(len(pages), 2)
        versions = [item["agentRuntimeVersion"] for page in pages for item in page["agentRuntimes"]]
        self.assertEqual(versions, ["1", "2"])
        self.assertEqual(
            control.get_agent_runtime(agentRuntimeId=runtime_id, agentRuntimeVersion="1")[
                "description"
            ],
            "made with boto3",
        )

        # A named endpoint pinned to version 1, moved to 2, listed, tagged, deleted.
        endpoint = control.create_agent_runtime_endpoint(
            agentRuntimeId=runtime_id,
            name="pinned",
            agentRuntimeVersion="1",
            description="stable",
            tags={"stage": "prod"},
        )
        self.assertEqual(endpoint["targetVersion"], "1")
        endpoint_arn = endpoint["agentRuntimeEndpointArn"]
        self.assertEqual(endpoint_arn, arn + "/runtime-endpoint/pinned")
        self.assertEqual(
            control.list_tags_for_resource(resourceArn=endpoint_arn)["tags"], {"stage": "prod"}
        )
        fetched = control.get_agent_runtime_endpoint(
            agentRuntimeId=runtime_id, endpointName="pinned"
        )
        self.assertEqual((fetched["status"], fetched["liveVersion"]), ("READY", "1"))
        moved = control.update_agent_runtime_endpoint(
            agentRuntimeId=runtime_id, endpointName="pinned", agentRuntimeVersion="2"
        )
        self.assertEqual(moved["targetVersion"], "2")
        names = [
            item["name"]
            for page in control.get_paginator("list_agent_runtime_endpoints").paginate(
                agentRuntimeId=runtime_id, PaginationConfig={"PageSize": 1}
            )
            for item in page["runtimeEndpoints"]
        ]
        self.assertEqual(sorted(names), ["DEFAULT", "pinned"])

        control.tag_resource(resourceArn=endpoint_arn, tags={"owner": "me"})
        control.untag_resource(resourceArn=endpoint_arn, tagKeys=["stage"])
        self.assertEqual(
            control.list_tags_for_resource(resourceArn=endpoint_arn)["tags"], {"owner": "me"}
        )
        deleted = control.delete_agent_runtime_endpoint(
            agentRuntimeId=runtime_id, endpointName="pinned"
        )
        self.assertEqual((deleted["status"], deleted["endpointName"]), ("DELETING", "pinned"))
        with self.assertRaises(control.exceptions.ResourceNotFoundException):
            control.get_agent_runtime_endpoint(agentRuntimeId=runtime_id, endpointName="pinned")
        with self.assertRaises(control.exceptions.ResourceNotFoundException):
            control.list_tags_for_resource(resourceArn=endpoint_arn)

        # Berth's own berth: tags change like any other.
        control.untag_resource(resourceArn=arn, tagKeys=["berth:session-storage-on-version-change"])
        self.assertEqual(
            control.list_tags_for_resource(resourceArn=arn)["tags"], {"team": "agents"}
        )

        # Deleting the runtime deletes it and its tags.
        gone = control.delete_agent_runtime(agentRuntimeId=runtime_id)
        self.assertEqual(
            (gone["ResponseMetadata"]["HTTPStatusCode"], gone["status"]), (202, "DELETING")
        )
        with self.assertRaises(control.exceptions.ResourceNotFoundException):
            control.get_agent_runtime(agentRuntimeId=runtime_id)
        with self.assertRaises(control.exceptions.ResourceNotFoundException):
            control.list_tags_for_resource(resourceArn=arn)

    def test_list_agent_runtimes_paginator_walks_every_page(self):
        ids = {self.create_runtime()["agentRuntimeId"] for _ in range(3)}
        pages = list(
            self.control.get_paginator("list_agent_runtimes").paginate(
                PaginationConfig={"PageSize": 2}
            )
        )
        self.assertGreaterEqual(len(pages), 2)
        listed = [item["agentRuntimeId"] for page in pages for item in page["agentRuntimes"]]
        self.assertEqual(len(listed), len(set(listed)), "a runtime listed twice")
        self.assertTrue(ids <= set(listed))
        for item in (item for page in pages for item in page["agentRuntimes"]):
            self.assertIsInstance(item["lastUpdatedAt"], datetime.datetime)
            self.assertIn("description", item)

    def test_modeled_exceptions(self):
        control = self.control
        with self.assertRaises(control.exceptions.ValidationException) as invalid:
            self.create_runtime(agentRuntimeName="1-not-a-name")
        self.assertEqual(invalid.exception.response["reason"], "FieldValidationFailed")
        self.assertIn("agentRuntimeName", field_names(invalid))

        with self.assertRaises(control.exceptions.ResourceNotFoundException):
            control.get_agent_runtime(agentRuntimeId="missing_agent-AbCdEf1234")

        # An endpoint's description is shorter than a runtime's (the model's 256): answers
        # never break the model's own limits.
        endpoint_owner = self.create_runtime()["agentRuntimeId"]
        with self.assertRaises(control.exceptions.ValidationException) as long_description:
            control.create_agent_runtime_endpoint(
                agentRuntimeId=endpoint_owner, name="described", description="d" * 257
            )
        self.assertEqual(field_names(long_description), ["description"])

        name = Names.unique("taken")
        self.create_runtime(agentRuntimeName=name)
        with self.assertRaises(control.exceptions.ConflictException) as conflict:
            self.create_runtime(agentRuntimeName=name)
        self.assertIn(name, str(conflict.exception))

    def test_tag_rules(self):
        control = self.control
        created = self.create_runtime(tags={"a": "1"})
        arn = created["agentRuntimeArn"]

        with self.assertRaises(control.exceptions.ValidationException) as reserved:
            control.tag_resource(resourceArn=arn, tags={"AWS:owner": "me"})
        self.assertIn('tags key "AWS:owner"', field_names(reserved))
        with self.assertRaises(control.exceptions.ValidationException) as reserved_untag:
            control.untag_resource(resourceArn=arn, tagKeys=["aws:cloudformation:stack-name"])
        self.assertIn("aws:", str(reserved_untag.exception))
        with self.assertRaises(control.exceptions.ValidationException) as too_long:
            control.tag_resource(resourceArn=arn, tags={"k" * 129: "v"})
        self.assertIn("128", str(too_long.exception))
        with self.assertRaises(control.exceptions.ValidationException):
            control.tag_resource(resourceArn=arn, tags={"emoji": "\u2603"})

        # 50 tags at most per resource, counting the ones it already has.
        control.tag_resource(resourceArn=arn, tags={"t%02d" % i: "v" for i in range(49)})
        self.assertEqual(len(control.list_tags_for_resource(resourceArn=arn)["tags"]), 50)
        with self.assertRaises(control.exceptions.ValidationException) as over:
            control.tag_resource(resourceArn=arn, tags={"one_more": "v"})
        self.assertIn("51", str(over.exception))
        control.tag_resource(resourceArn=arn, tags={"a": "overwritten"})
        self.assertEqual(
            control.list_tags_for_resource(resourceArn=arn)["tags"]["a"], "overwritten"
        )

        # ARNs: malformed is a ValidationException naming the field; unknown is not found.
        with self.assertRaises(control.exceptions.ValidationException) as malformed:
            control.list_tags_for_resource(resourceArn="arn:aws:s3:::not-agentcore-bucket")
        self.assertEqual(field_names(malformed), ["resourceArn"])
        for unknown in (
            arn[:-10] + "ZZZZZZZZZZ",
            arn.replace("123456789012", "210987654321"),
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:gateway/gw-123",
            arn + "/runtime-endpoint/nope",
        ):
            with self.assertRaises(control.exceptions.ResourceNotFoundException, msg=unknown):
                control.tag_resource(resourceArn=unknown, tags={"x": "y"})

        # Required members botocore would check itself, sent anyway: the server checks them too.
        unchecked = client("bedrock-agentcore-control", validate=False)
        with self.assertRaises(unchecked.exceptions.ValidationException) as missing:
            unchecked.tag_resource(resourceArn=arn)
        self.assertEqual(field_names(missing), ["tags"])


if __name__ == "__main__":
    unittest.main()
