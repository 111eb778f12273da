// Fails when the committed console/dist is not what `npm run build` makes from the sources
// (someone changed console/src or clients/ts/src and did not rebuild, or edited dist/ by
// hand). Builds into a temporary directory and compares file by file.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(root, "dist");
const fresh = mkdtempSync(join(tmpdir(), "switchboard-console-"));
try {
  execFileSync(process.execPath, [join(root, "scripts/build.mjs"), fresh], { stdio: "inherit" });
  const list = (dir) => {
    try {
      return readdirSync(dir).sort();
    } catch {
      return [];
    }
  };
  const names = [...new Set([...list(committed), ...list(fresh)])].sort();
  const problems = [];
  for (const name of names) {
    let a;
    let b;
    try {
      a = readFileSync(join(committed, name));
    } catch {
      problems.push(`${name}: missing from console/dist`);
      continue;
    }
    try {
      b = readFileSync(join(fresh, name));
    } catch {
      problems.push(`${name}: in console/dist but not built from the sources`);
      continue;
    }
    if (!a.equals(b)) problems.push(`${name}: differs from a fresh build`);
  }
  if (problems.length) {
    console.error(`console/dist is out of date:\n  ${problems.join("\n  ")}\nRun \`npm run build\` in console/ and commit console/dist.`);
    process.exit(1);
  }
  console.log(`console/dist matches a fresh build (${names.length} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
