import type { ObjectStoreConnection } from "../adapters/s3/client.ts";
import type { Settings } from "../config/settings.ts";

/** How to reach the object store the settings name; undefined when objectStoreUrl is unset. */
export function objectStoreConnection(settings: Settings): ObjectStoreConnection | undefined {
  if (settings.objectStoreUrl === "") return undefined;
  return {
    url: settings.objectStoreUrl,
    endpoint: settings.objectStoreEndpoint === "" ? undefined : settings.objectStoreEndpoint,
    region: settings.objectStoreRegion === "" ? undefined : settings.objectStoreRegion,
    forcePathStyle: settings.objectStoreForcePathStyle,
    credentials:
      settings.objectStoreAccessKeyId === ""
        ? undefined
        : {
            accessKeyId: settings.objectStoreAccessKeyId,
            secretAccessKey: settings.objectStoreSecretAccessKey,
          },
  };
}
