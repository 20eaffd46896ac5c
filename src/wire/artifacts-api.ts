import { readUploadLocation, type ArtifactUploader } from "../core/artifact-upload.ts";
import type { Operation } from "./operation.ts";

/**
 * Berth's own upload of code: `PUT /berth/v1/artifacts/{bucket}/{prefix}` with a .tar.gz body
 * (the CLI signs it as UNSIGNED-PAYLOAD, so it streams; a body signed over its SHA-256 is held
 * and checked first). The answer's `s3` is then codeConfiguration.code.s3 for
 * CreateAgentRuntime: s3://bucket/prefix in the local artifact store, as if it had been put
 * there by hand, or the object the upload became in the object store.
 */
export function artifactOperations(uploader: ArtifactUploader): Operation[] {
  return [
    {
      name: "UploadArtifact",
      method: "PUT",
      path: "/berth/v1/artifacts/:bucket/:prefix".split("/"),
      successStatus: 200,
      body: "streamed",
      handle: async (input) => {
        const location = readUploadLocation(
          input.params["bucket"] ?? "",
          input.params["prefix"] ?? "",
        );
        const unpacked = await uploader.unpack(location, input.payload.stream);
        return { json: { ...location, ...unpacked } };
      },
    },
  ];
}
