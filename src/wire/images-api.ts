import { BerthError } from "../core/errors.ts";
import type { ImageCatalog } from "../core/images.ts";
import { ArtifactProblem } from "../core/preparation.ts";
import { operation, type Operation } from "./operation.ts";

/**
 * Berth's own API for the container image cache: load an image from an OCI layout archive
 * (for hosts without a registry), list what is cached, drop a loaded name.
 *   PUT    /berth/v1/images?reference=REF   body: the archive (streamed when UNSIGNED-PAYLOAD,
 *                                           else held and checked against its signed SHA-256)
 *   GET    /berth/v1/images
 *   DELETE /berth/v1/images?reference=REF
 */
export function imageOperations(images: ImageCatalog): Operation[] {
  const requireReference = (query: URLSearchParams): string => {
    const reference = query.get("reference");
    if (reference === null || reference === "") {
      throw new BerthError(
        "ValidationException",
        "Give the image's name as ?reference=host/repository:tag (what runtimes will use as containerUri)",
      );
    }
    return reference;
  };
  return [
    {
      name: "LoadImage",
      method: "PUT",
      path: "/berth/v1/images".split("/"),
      successStatus: 200,
      body: "streamed",
      handle: async (input) => {
        const reference = requireReference(input.request.query);
        try {
          return { json: await images.load(input.payload.stream, reference, input.raw.signal) };
        } catch (error) {
          if (error instanceof ArtifactProblem)
            throw new BerthError("ValidationException", error.message, { cause: error });
          throw error;
        }
      },
    },
    operation("ListImages", "GET", "/berth/v1/images", 200, async () => ({
      images: await images.list(),
    })),
    operation("DeleteImageName", "DELETE", "/berth/v1/images", 200, async (input) => {
      const reference = requireReference(input.request.query);
      if (!(await images.unname(reference)))
        throw new BerthError("ResourceNotFoundException", `No image was loaded as ${reference}`);
      return {};
    }),
  ];
}
