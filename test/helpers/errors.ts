// The `code` of what a call throws (undefined when it does not throw), for asserting error codes briefly.
export function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}
