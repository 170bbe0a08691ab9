// `npm run check`, part three: what the modules really export, against what their .d.ts
// files declare, both ways. The type checks (tsconfig.json, tsconfig.client.json) prove that
// what is declared exists with its declared type; they cannot see a runtime export the
// declarations forget, nor an undeclared public method of Chat. This imports wtchat.js and
// react.js in Node, reads the declarations with TypeScript's own API, and compares:
// - the modules' value exports with the declared values (types and interfaces are not
//   runtime exports);
// - the public members of a Chat (its prototype and the fields its constructor sets; `_`
//   marks the private ones) with the declared class's members.
// Prints what it compared; exits 1 on any difference.

import { fileURLToPath } from "node:url";
import ts from "typescript";

const root = fileURLToPath(new URL("..", import.meta.url));
const entries = [
  { js: "wtchat.js", dts: "wtchat.d.ts" },
  { js: "react.js", dts: "react.d.ts" },
];

const program = ts.createProgram(
  entries.map((e) => root + e.dts),
  { noEmit: true, types: [], module: ts.ModuleKind.Preserve, moduleResolution: ts.ModuleResolutionKind.Bundler },
);
const checker = program.getTypeChecker();

/** The declared exports of a .d.ts file, by name. */
function declared(dts) {
  const file = program.getSourceFile(root + dts);
  if (!file) throw new Error(`cannot read ${dts}`);
  const symbol = checker.getSymbolAtLocation(file);
  return new Map(checker.getExportsOfModule(symbol).map((s) => [s.name, s]));
}

/** The names in `a` and not in `b`. */
const minus = (a, b) => [...a].filter((x) => !b.has(x)).sort();

let failed = false;
function compare(what, actual, expected) {
  const undeclared = minus(actual, expected);
  const missing = minus(expected, actual);
  if (undeclared.length) console.error(`  ${what}: not declared: ${undeclared.join(", ")}`);
  if (missing.length) console.error(`  ${what}: declared but missing: ${missing.join(", ")}`);
  if (undeclared.length || missing.length) failed = true;
  else console.log(`  ${what}: ${[...actual].sort().join(", ")}: as declared`);
}

for (const { js, dts } of entries) {
  const module = await import(root + js);
  const symbols = declared(dts);
  const values = new Set([...symbols].filter(([, s]) => s.flags & ts.SymbolFlags.Value).map(([name]) => name));
  compare(`${js} exports`, new Set(Object.keys(module)), values);

  if (js === "wtchat.js") {
    // A Chat as the constructor makes it, on a stand-in for its connection (the
    // constructor reads only the connection's options).
    const chat = new module.Chat({ options: {} }, "room");
    const runtime = new Set(
      [...Object.keys(chat), ...Object.getOwnPropertyNames(module.Chat.prototype)].filter(
        (name) => name !== "constructor" && !name.startsWith("_"),
      ),
    );
    const type = checker.getDeclaredTypeOfSymbol(symbols.get("Chat"));
    compare("Chat members", runtime, new Set(checker.getPropertiesOfType(type).map((p) => p.name)));
  }
}
if (failed) {
  console.error("the modules and their declarations differ: change both together");
  process.exit(1);
}
