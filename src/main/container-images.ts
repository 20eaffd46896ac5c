import { join } from "node:path";
import { ContainerImages } from "../adapters/images/container-images.ts";
import { ImageStore } from "../adapters/images/image-store.ts";
import { RegistryAddressPolicy } from "../adapters/images/registry-addresses.ts";
import { RegistryClient } from "../adapters/images/registry-client.ts";
import { credentialsFromFile, insecureRegistries } from "../adapters/images/registry-settings.ts";
import type { Settings, SettingsOf } from "../config/settings.ts";
import type { Logger } from "../core/logger.ts";
import type { ImageRootNeeds } from "../core/sandbox.ts";
import type { MetadataStore } from "../core/store.ts";

export interface StartedContainerImages {
  images: ContainerImages;
  /** Removes cached images nothing needs now (it also runs every imageGcIntervalMs). */
  collectGarbage: () => Promise<string[]>;
  /** Stops the collection timer. */
  stop: () => void;
}

/**
 * The container image cache under `<data-dir>/images`, its registry client, and its garbage
 * collection: images no version pins and no load names go once unused for imageRetentionSeconds.
 * `rootNeeds`: what the sandbox driver mounts over in an image root (its imageRootNeeds).
 */
export function startContainerImages(
  settings: SettingsOf<"containerImages"> & Pick<Settings, "dataDir">,
  store: MetadataStore,
  log: Logger,
  now: () => Date,
  rootNeeds: ImageRootNeeds,
): StartedContainerImages {
  const cacheDir = join(settings.dataDir, "images");
  const images = new ContainerImages({
    store: new ImageStore(cacheDir, {
      maxImageBytes: settings.maxImageBytes,
      maxImageMetadataBytes: settings.maxImageMetadataBytes,
      rootNeeds,
    }),
    registry: new RegistryClient({
      credentials: credentialsFromFile(settings.registryCredentialsFile),
      insecure: insecureRegistries(settings.registryInsecureHosts),
      addresses: new RegistryAddressPolicy(settings.registryPrivateHosts),
      maxMetadataBytes: settings.maxImageMetadataBytes,
    }),
    stagingDir: join(cacheDir, "staging"),
    maxMetadataBytes: settings.maxImageMetadataBytes,
  });
  const collectGarbage = async (): Promise<string[]> => {
    const pinned = await store.listArtifactDigests();
    const removed = await images.collectGarbage(
      pinned,
      settings.imageRetentionSeconds * 1000,
      now().getTime(),
    );
    if (removed.length > 0) log.info("removed unused container images", { digests: removed });
    return removed;
  };
  const timer = setInterval(() => {
    collectGarbage().catch((error: unknown) => {
      log.warn("could not collect unused container images", { error: String(error) });
    });
  }, settings.imageGcIntervalMs);
  timer.unref();
  return {
    images,
    collectGarbage,
    stop: () => {
      clearInterval(timer);
    },
  };
}
