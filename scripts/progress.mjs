// Install-time messages that stay visible: npm hides an install script's output unless it fails, so each
// line also goes to the terminal itself when there is one.
import { openSync, writeSync } from "node:fs";

let tty = null;
if (!process.stderr.isTTY) {
  try {
    tty = openSync("/dev/tty", "w");
  } catch {
    tty = null; // no terminal (CI, containers): stderr only
  }
}

export function say(line) {
  process.stderr.write(`${line}\n`);
  if (tty !== null) {
    try {
      writeSync(tty, `${line}\n`);
    } catch {
      tty = null;
    }
  }
}
