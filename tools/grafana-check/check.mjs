#!/usr/bin/env node
// Offline check of Grafana dashboard JSON against Grafana's own schema types
// (@grafana/schema's `Dashboard`), with the TypeScript compiler: no Grafana server needed.
//
//   node check.mjs [dashboard.json ...]   (default: every ../../deploy/observability/grafana/*.json)
//
// Each file is wrapped as `(<json>) satisfies JsonOf<Dashboard>` and type-checked with
// `tsc --strict`. `satisfies` keeps literal types and excess-property checks, so an unknown
// key (a typo'd `gridPos.hh`), a missing required field (`panels[].type`) or a wrong type
// (`graphTooltip: "shared"`) fails. `JsonOf<T>` is `T` with every string enum replaced by the
// union of its values: JSON writes `"mode": "absolute"`, which TypeScript would not accept
// for `ThresholdsMode.Absolute`, but the values themselves are still checked
// (`"mode": "absolut"` fails). Panel `options` and `targets[]` are typed loosely by the
// schema itself (plugin-specific), so they are checked for shape only.
//
// Exit status: 0 when every dashboard type-checks, 1 otherwise (tsc's diagnostics are
// printed with the dashboard's line numbers), 2 on a usage or setup problem.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const tsc = join(here, 'node_modules', '.bin', 'tsc');
if (!existsSync(tsc) || !existsSync(join(here, 'node_modules', '@grafana', 'schema'))) {
  console.error(`grafana-check: dependencies missing; run: npm ci --no-audit --no-fund --prefix ${here}`);
  process.exit(2);
}

let files = process.argv.slice(2);
if (files.length === 0) {
  const dir = resolve(here, '..', '..', 'deploy', 'observability', 'grafana');
  files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort().map((f) => join(dir, f));
}
if (files.length === 0) {
  console.error('grafana-check: no dashboard to check');
  process.exit(2);
}

const PRELUDE = `import type { Dashboard } from '@grafana/schema';
// JSON has no enums: a string enum is written as one of its values.
type JsonOf<T> = T extends string
  ? string extends T ? string : \`\${T}\`
  : T extends number | boolean | null | undefined ? T
  : T extends ReadonlyArray<infer U> ? Array<JsonOf<U>>
  : T extends object ? { [K in keyof T]: JsonOf<T[K]> }
  : T;
`;
const preludeLines = PRELUDE.split('\n').length - 1;

// The temporary sources live next to node_modules so that '@grafana/schema' resolves.
const work = mkdtempSync(join(here, '.check-'));
let failed = false;
try {
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    try {
      JSON.parse(text);
    } catch (e) {
      console.error(`${file}: not valid JSON: ${e.message}`);
      failed = true;
      continue;
    }
    // `satisfies` must stay on the line of the closing parenthesis.
    const src = `${PRELUDE}export const dashboard = (\n${text.trimEnd()}\n) satisfies JsonOf<Dashboard>;\n`;
    const ts = join(work, 'dashboard.ts');
    writeFileSync(ts, src);
    const r = spawnSync(
      tsc,
      ['--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext',
        '--target', 'es2022', '--pretty', 'false', ts],
      { cwd: here, encoding: 'utf8' },
    );
    if (r.error) {
      console.error(`grafana-check: cannot run ${tsc}: ${r.error.message}`);
      process.exit(2);
    }
    if (r.status === 0) {
      console.log(`ok   ${relative(process.cwd(), file) || file}`);
      continue;
    }
    failed = true;
    console.error(`FAIL ${file}`);
    // Map "dashboard.ts(LINE,COL): error ..." back to the JSON file's lines.
    const out = `${r.stdout}${r.stderr}`;
    for (const line of out.split('\n').filter((l) => l.trim() !== '')) {
      const m = /^.*dashboard\.ts\((\d+),(\d+)\): (.*)$/.exec(line);
      if (m) {
        const jsonLine = Number(m[1]) - preludeLines - 1;
        console.error(`  ${file}:${jsonLine}:${m[2]}: ${m[3]}`);
      } else {
        console.error(`  ${line}`);
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
