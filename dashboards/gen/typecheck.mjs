// Type-checks every dashboard against @grafana/schema's Dashboard type: each JSON is wrapped as
// `import type { Dashboard } from '@grafana/schema'; export const d: Dashboard = <json>;` and
// `tsc --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext` must pass.
// Needs `npm ci --prefix dashboards` (tests/run does it).
import { readFileSync, writeFileSync, mkdirSync, rmSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnSync } from 'node:child_process';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const work = join(root, '.typecheck');
rmSync(work, { recursive: true, force: true });
mkdirSync(work);
const files = readdirSync(root).filter((f) => f.endsWith('.json') && !['package.json', 'package-lock.json', 'expected-empty.json'].includes(f));
const wrapped = files.map((f) => {
  const ts = join(work, f.replace(/\.json$/, '.ts'));
  writeFileSync(ts, `import type { Dashboard } from '@grafana/schema';\nexport const d: Dashboard = ${readFileSync(join(root, f), 'utf8')};\n`);
  return ts;
});
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', ...wrapped], { cwd: root, encoding: 'utf8' });
process.stdout.write(r.stdout ?? '');
process.stderr.write(r.stderr ?? '');
if (r.status !== 0) {
  console.error(`tsc failed (exit ${r.status}) on ${files.join(', ')}`);
  process.exit(1);
}
rmSync(work, { recursive: true, force: true });
console.log(`type-checked against @grafana/schema: ${files.join(', ')}`);
