// Building blocks for Medic's Grafana dashboards: panels, targets, variables and an automatic
// grid layout. Every dashboard is plain data built from these helpers; generate.mjs writes them.

/** The Prometheus datasource is always the `datasource` template variable. */
export const DS = { type: 'prometheus', uid: '${datasource}' };

/** Grafana's current dashboard schema version (@grafana/schema 13.x: `defaultDashboard.schemaVersion`). */
export const SCHEMA_VERSION = 42;

/** Why a query may legitimately return nothing on a healthy test fleet. */
export const EMPTY_KINDS = {
  future: 'the metric comes from a Medic feature that has not landed yet',
  fault: 'the series exist only while something goes wrong',
  replication: 'the series exist only for ReplicatedMergeTree tables (ClickHouse with Keeper)',
};

/**
 * A PromQL target. `opts.empty = { kind, reason }` marks a query that may return nothing on a
 * healthy fleet; it is kept out of the dashboard JSON and listed in expected-empty.json instead.
 */
export function q(expr, legendFormat = '', opts = {}) {
  const t = { expr, legendFormat, ...opts };
  return t;
}

let nextId = 1;
export function resetIds() {
  nextId = 1;
}

function targets(list, instant, format) {
  return list.map((t, i) => {
    const { empty, ...rest } = t;
    const out = {
      datasource: DS,
      refId: String.fromCharCode(65 + i),
      expr: rest.expr,
      legendFormat: rest.legendFormat || '__auto',
      range: !instant,
      instant,
      editorMode: 'code',
    };
    if (format) out.format = format;
    if (rest.interval) out.interval = rest.interval;
    Object.defineProperty(out, 'empty', { value: empty, enumerable: false });
    return out;
  });
}

/**
 * Field defaults carry only plainly typed settings (unit, min, max, decimals, custom). Thresholds,
 * colour mode and value mappings are typed as TypeScript string enums in @grafana/schema, which a
 * JSON literal can never satisfy, so they go into an override matching every numeric field
 * (Grafana's "Fields with type: number") — the same effect, and the JSON type-checks as is.
 */
function fieldConfig(unit, extra = {}) {
  const { custom, overrides, thresholds, mappings, min, max, decimals, color } = extra;
  const defaults = { unit };
  if (custom) defaults.custom = custom;
  if (min !== undefined) defaults.min = min;
  if (max !== undefined) defaults.max = max;
  if (decimals !== undefined) defaults.decimals = decimals;
  const properties = [];
  if (color) properties.push({ id: 'color', value: color });
  if (thresholds) properties.push({ id: 'thresholds', value: thresholds });
  if (mappings) properties.push({ id: 'mappings', value: mappings });
  const all = properties.length ? [{ matcher: { id: 'byType', options: 'number' }, properties }] : [];
  return { defaults, overrides: [...all, ...(overrides ?? [])] };
}

/** Thresholds: `steps(['green'], [0.8, 'orange'], [0.9, 'red'])`. */
export function steps(...s) {
  return {
    mode: 'absolute',
    steps: s.map(([a, b]) => (b === undefined ? { color: a, value: null } : { color: b, value: a })),
  };
}

function emptyNote(list) {
  const notes = list.filter((t) => t.empty).map((t) => t.empty.reason);
  return notes.length ? ' Empty ' + [...new Set(notes)].map((n) => n.replace(/^./, (c) => c.toLowerCase())).join('; ') + '.' : '';
}

function base(type, title, description, w, h, tgts, unit, extra) {
  return {
    type,
    id: nextId++,
    title,
    description: description + emptyNote(tgts),
    datasource: DS,
    gridPos: { w, h, x: 0, y: 0 },
    fieldConfig: fieldConfig(unit, extra),
  };
}

export function timeseries(title, description, tgts, { unit = 'short', w = 12, h = 8, stack = false, ...extra } = {}) {
  const p = base('timeseries', title, description, w, h, tgts, unit, {
    ...extra,
    custom: {
      drawStyle: 'line',
      lineWidth: 1,
      fillOpacity: stack ? 30 : 10,
      showPoints: 'never',
      spanNulls: false,
      stacking: { mode: stack ? 'normal' : 'none', group: 'A' },
      ...(extra.custom ?? {}),
    },
  });
  p.options = {
    legend: { displayMode: 'table', placement: 'bottom', showLegend: true, calcs: ['mean', 'max', 'lastNotNull'] },
    tooltip: { mode: 'multi', sort: 'desc' },
  };
  p.targets = targets(tgts, false);
  return p;
}

export function stat(title, description, tgts, { unit = 'short', w = 4, h = 4, colorMode = 'value', graph = 'area', ...extra } = {}) {
  const p = base('stat', title, description, w, h, tgts, unit, { color: { mode: 'thresholds' }, thresholds: steps(['green']), ...extra });
  p.options = {
    reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
    colorMode,
    graphMode: graph,
    textMode: 'auto',
    justifyMode: 'auto',
    orientation: 'auto',
  };
  p.targets = targets(tgts, false);
  return p;
}

export function bargauge(title, description, tgts, { unit = 'short', w = 12, h = 8, ...extra } = {}) {
  const p = base('bargauge', title, description, w, h, tgts, unit, { color: { mode: 'thresholds' }, thresholds: steps(['green']), ...extra });
  p.options = {
    reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
    orientation: 'horizontal',
    displayMode: 'gradient',
    showUnfilled: true,
    valueMode: 'color',
    namePlacement: 'left',
  };
  p.targets = targets(tgts, true);
  return p;
}

/**
 * A table of instant queries, one row per series: each target becomes a `Value #<refId>` column,
 * merged on the labels and renamed with `columns` ({ refId: 'Header' }); `units` per column.
 */
export function table(title, description, tgts, { unit = 'short', w = 24, h = 8, columns = {}, units = {}, hide = [], sortBy, ...extra } = {}) {
  const p = base('table', title, description, w, h, tgts, unit, {
    ...extra,
    custom: { align: 'auto', cellOptions: { type: 'auto' }, inspect: false },
    overrides: Object.entries(units).map(([refId, u]) => ({
      matcher: { id: 'byName', options: `Value #${refId}` },
      properties: [{ id: 'unit', value: u }],
    })),
  });
  const renameByName = Object.fromEntries(Object.entries(columns).map(([refId, name]) => [`Value #${refId}`, name]));
  const excludeByName = Object.fromEntries(['Time', '__name__', 'job', ...hide].map((k) => [k, true]));
  p.options = { showHeader: true, cellHeight: 'sm', footer: { show: false, reducer: ['sum'], fields: '' } };
  if (sortBy) p.options.sortBy = [{ displayName: sortBy, desc: true }];
  p.transformations = [
    { id: 'merge', options: {} },
    { id: 'organize', options: { excludeByName, renameByName, indexByName: {} } },
  ];
  p.targets = targets(tgts, true, 'table');
  return p;
}

export function row(title) {
  return { type: 'row', id: nextId++, title, collapsed: false, gridPos: { w: 24, h: 1, x: 0, y: 0 }, panels: [] };
}

/** Places panels left to right, top to bottom, on Grafana's 24-column grid. */
function layout(panels) {
  let x = 0;
  let y = 0;
  let rowH = 0;
  for (const p of panels) {
    const { w, h } = p.gridPos;
    if (p.type === 'row' || x + w > 24) {
      y += rowH;
      x = 0;
      rowH = 0;
    }
    p.gridPos = { h, w, x, y };
    x += w;
    rowH = Math.max(rowH, h);
    if (p.type === 'row') {
      y += h;
      x = 0;
      rowH = 0;
    }
  }
  return panels;
}

export function datasourceVar() {
  return {
    name: 'datasource',
    label: 'Prometheus',
    description: 'The Prometheus that scrapes Medic (jobs medic-agent and medic-controller)',
    type: 'datasource',
    query: 'prometheus',
    hide: 0,
    refresh: 1,
    regex: '',
    skipUrlSync: false,
    options: [],
  };
}

/** A `label_values(metric, label)` variable; `empty` as for targets when the metric may not exist yet. */
export function queryVar(name, label, description, query, { multi = false, includeAll = false, empty } = {}) {
  const v = {
    name,
    label,
    description,
    type: 'query',
    datasource: DS,
    query: { qryType: 1, query, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
    hide: 0,
    refresh: 2,
    regex: '',
    sort: 1,
    multi,
    includeAll,
    options: [],
    skipUrlSync: false,
  };
  if (includeAll) {
    v.allValue = '.*';
    v.current = { selected: true, text: 'All', value: '$__all' };
  }
  Object.defineProperty(v, 'empty', { value: empty, enumerable: false });
  return v;
}

export function dashboard({ uid, title, description, tags, vars, panels, links = [], time = 'now-6h' }) {
  return {
    uid,
    title,
    description,
    tags: ['medic', ...tags],
    editable: true,
    graphTooltip: 1,
    fiscalYearStartMonth: 0,
    liveNow: false,
    refresh: '30s',
    schemaVersion: SCHEMA_VERSION,
    version: 1,
    time: { from: time, to: 'now' },
    timepicker: {},
    timezone: 'browser',
    weekStart: '',
    annotations: {
      list: [
        {
          builtIn: 1,
          datasource: { type: 'grafana', uid: '-- Grafana --' },
          enable: true,
          hide: true,
          iconColor: 'rgba(0, 211, 255, 1)',
          name: 'Annotations & Alerts',
          type: 'dashboard',
        },
      ],
    },
    links: [
      { title: 'Medic', type: 'dashboards', tags: ['medic'], asDropdown: true, includeVars: true, keepTime: true, icon: 'external link', targetBlank: false, tooltip: '', url: '' },
      ...links,
    ],
    templating: { list: [datasourceVar(), ...vars] },
    panels: layout(panels),
  };
}

/** The expected-empty entries of one dashboard: every marked target and variable, with the reason. */
export function expectedEmpty(d, sourceVars, sourcePanels) {
  const out = [];
  for (const v of sourceVars) {
    if (v.empty) out.push({ dashboard: d.uid, variable: v.name, query: v.query.query, kind: v.empty.kind, reason: v.empty.reason });
  }
  for (const p of sourcePanels) {
    for (const t of p.targets ?? []) {
      if (t.empty) out.push({ dashboard: d.uid, panel: p.title, refId: t.refId, expr: t.expr, kind: t.empty.kind, reason: t.empty.reason });
    }
  }
  return out;
}
