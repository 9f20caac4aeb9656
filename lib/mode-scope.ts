// The two shapes a process-wide mode switch takes (noGrad, skipInit): run a function inside the mode, or
// enter it until a returned scope is disposed (`using _ = noGrad()`). `enter` switches the mode on and
// returns how to restore what was there before; the restore runs once, however often the scope is disposed.
export function inMode<T>(enter: () => () => void, fn: (() => T) | undefined): T | Disposable {
  const restore = enter();
  if (fn === undefined) {
    let open = true;
    return {
      [Symbol.dispose]: () => {
        if (!open) return;
        open = false;
        restore();
      },
    };
  }
  try {
    return fn();
  } finally {
    restore();
  }
}
