import type { MetadataStore } from "./store.ts";
import type { RuntimeVersionRecord } from "./model.ts";

/** What core operations need from the outside world, supplied by the composition root. */
export interface CoreContext {
  store: MetadataStore;
  region: string;
  accountId: string;
  now: () => Date;
  /** Starts preparing a new version's artifact in the background; settles its status when done. */
  prepareVersion: (version: RuntimeVersionRecord) => void;
  /** Ends every session of a runtime that is being deleted and deletes their storage. */
  endSessions: (runtimeId: string) => Promise<void>;
  /** Smallest lifecycle timeout a runtime may ask for (AgentCore: 60 s; lower for tests). */
  minLifecycleSeconds: number;
}

export function timestamp(context: CoreContext): string {
  return context.now().toISOString();
}
