import {
  noObserver,
  type Observer,
  type RequestOutcome,
  type StepAttributes,
} from "../core/observer.ts";

/**
 * One observer that tells several (metrics, traces): each step runs once, nested inside every
 * observer's own wrapping, so a span and a duration sample time the same work.
 */
export function combineObservers(all: readonly Observer[]): Observer {
  const observers = all.filter((observer) => observer !== noObserver);
  // Nothing to combine: no wrapping on every request and step.
  if (observers.length === 0) return noObserver;
  if (observers.length === 1) return observers[0] ?? noObserver;
  return {
    step: <T>(name: string, attributes: StepAttributes, work: () => Promise<T>): Promise<T> =>
      observers.reduceRight<() => Promise<T>>(
        (inner, observer) => () => observer.step(name, attributes, inner),
        work,
      )(),
    request: <T>(
      headers: Record<string, string | string[] | undefined>,
      attributes: StepAttributes,
      work: () => Promise<T>,
    ): Promise<T> =>
      observers.reduceRight<() => Promise<T>>(
        (inner, observer) => () => observer.request(headers, attributes, inner),
        work,
      )(),
    traceparent: () => {
      for (const observer of observers) {
        const traceparent = observer.traceparent();
        if (traceparent !== undefined) return traceparent;
      }
      return undefined;
    },
    requestEnded: (outcome: RequestOutcome) => {
      for (const observer of observers) observer.requestEnded(outcome);
    },
  };
}
