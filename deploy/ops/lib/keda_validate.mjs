// Validates KEDA ScaledObjects (JSON, one per line on stdin) against the
// ScaledObject schema of KEDA's CRD, as compiled by the npm package
// @kubernetes-models/keda (installed by tools.sh into .tools/keda).
// Usage: node keda_validate.mjs <node_modules dir>  < objects.jsonl
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const pkgDir = path.join(modules, "@kubernetes-models", "keda");
const version = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
const { ScaledObject } = await import(
  pathToFileURL(path.join(pkgDir, "keda.sh", "v1alpha1", "ScaledObject.js")).href
);
const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.trim());
if (lines.length === 0) {
  console.error("no ScaledObject to validate");
  process.exit(1);
}
let failed = 0;
for (const line of lines) {
  const doc = JSON.parse(line);
  try {
    new ScaledObject(doc).validate();
    console.log(`ScaledObject ${doc.metadata?.name}: valid (@kubernetes-models/keda ${version})`);
  } catch (e) {
    failed++;
    console.log(`ScaledObject ${doc.metadata?.name}: INVALID: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
