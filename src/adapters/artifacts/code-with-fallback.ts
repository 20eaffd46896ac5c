import type { CodeLocation, CodeSource } from "./code-source.ts";

/**
 * Code from the object store first and, for an artifact it does not hold, from Berth's local
 * artifact store: versions made before the object store was set keep running.
 */
export class CodeWithFallback implements CodeSource {
  private readonly primary: CodeSource;
  private readonly fallback: CodeSource;

  constructor(primary: CodeSource, fallback: CodeSource) {
    this.primary = primary;
    this.fallback = fallback;
  }

  location(artifact: CodeLocation): string {
    return this.primary.location(artifact);
  }

  notFound(artifact: CodeLocation): string {
    return `${this.primary.notFound(artifact)} (nor is it in the local artifact store, ${this.fallback.location(artifact)})`;
  }

  async folder(artifact: CodeLocation): Promise<string | undefined> {
    return (
      (await this.primary.folder(artifact)) ??
      (await this.fallback.folder(artifact).catch(() => undefined))
    );
  }
}
