// Medic's five Grafana dashboards, as data. `node gen/generate.mjs` writes them to dashboards/*.json.
import { q, stat, timeseries, bargauge, table, row, queryVar, dashboard, steps, resetIds } from './lib.mjs';

const RI = '$__rate_interval';

// Why some queries may return nothing on a healthy fleet (listed in expected-empty.json).
const ANOMALY = { kind: 'future', reason: 'Until anomaly detection lands in the controller (medic_anomaly_score)' };
const FORECAST = { kind: 'future', reason: 'Until exhaustion forecasting lands in the controller (medic_forecast_exhaustion_seconds)' };
const ACTIONS = { kind: 'future', reason: 'Until remediation playbooks land in the controller (medic_actions_total)' };
const RULES = { kind: 'future', reason: 'Until rule files land in the controller (medic_rules_last_reload_success)' };
const REJECTS = { kind: 'fault', reason: 'Until the controller rejects a sample or a stream (a reason label appears with the first one)' };
const COLLECTOR_ERR = { kind: 'fault', reason: 'Until a collector fails a round (a collector label appears with the first failure)' };
const CH_ERRORS = { kind: 'fault', reason: 'Until ClickHouse records an error in system.errors' };
const DETACHED = { kind: 'fault', reason: 'Until ClickHouse has detached parts (system.detached_parts)' };
const REPLICA = { kind: 'replication', reason: 'Unless the node has ReplicatedMergeTree tables (system.replicas; needs Keeper)' };
const ALERTS = { kind: 'fault', reason: 'Unless a Prometheus alert is firing' };

const PCT = { min: 0, max: 1 };
const FS = 'fstype!~"tmpfs|ramfs"';

const upDown = [
  { type: 'value', options: { 0: { text: 'DOWN', color: 'red', index: 0 }, 1: { text: 'UP', color: 'green', index: 1 } } },
];

// ---------------------------------------------------------------------------------------------
function fleet() {
  resetIds();
  const I = 'instance=~"$instance"';
  const vars = [
    queryVar('instance', 'Node', 'agentd instances (Prometheus job medic-agent)', 'label_values(medic_agent_connected, instance)', { multi: true, includeAll: true }),
  ];
  const panels = [
    row('Fleet'),
    stat('Agents up', 'agentd instances Prometheus scrapes successfully.', [q(`count(up{job="medic-agent"} == 1)`, 'up')], { thresholds: steps(['red'], [1, 'green']), graph: 'none' }),
    stat('Agents down', 'agentd instances Prometheus fails to scrape (node down, agentd stopped, network).', [q(`count(up{job="medic-agent"} == 0) or vector(0)`, 'down')], { thresholds: steps(['green'], [1, 'red']), graph: 'none' }),
    stat('Agents streaming', 'Agents with an open gRPC stream to the controller.', [q('sum(medic_agents_connected)', 'connected')], { thresholds: steps(['red'], [1, 'green']) }),
    stat('Telemetry store', 'Whether the controller\'s store (embedded or ClickHouse) accepts writes.', [q('min(medic_store_up)', 'store')], { mappings: upDown, thresholds: steps(['red'], [1, 'green']), graph: 'none' }),
    stat('ClickHouse servers up', 'ClickHouse servers answering their node\'s agent, out of those watched.', [q(`sum(clickhouse_up{${I}})`, 'up'), q(`count(clickhouse_up{${I}})`, 'watched')], { graph: 'none' }),
    stat('Spool backlog', 'Batches waiting in agents\' disk spools for the controller\'s ack, all nodes.', [q(`sum(medic_agent_spool_batches{${I}})`, 'batches')], { thresholds: steps(['green'], [100, 'orange'], [1000, 'red']) }),

    row('Nodes'),
    table('Nodes', 'One row per node: resource use now and the agent\'s link to the controller.', [
      q(`1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle",${I}}[${RI}]))`),
      q(`1 - node_memory_MemAvailable_bytes{${I}} / node_memory_MemTotal_bytes{${I}}`),
      q(`max by (instance) (1 - node_filesystem_avail_bytes{${FS},${I}} / node_filesystem_size_bytes{${FS},${I}})`),
      q(`node_load1{${I}}`),
      q(`medic_agent_connected{${I}}`),
      q(`medic_agent_spool_batches{${I}}`),
    ], { h: 8, columns: { A: 'CPU busy', B: 'Memory used', C: 'Fullest filesystem', D: 'Load 1m', E: 'Streaming', F: 'Spool batches' }, units: { A: 'percentunit', B: 'percentunit', C: 'percentunit', D: 'short', E: 'bool_yes_no', F: 'short' }, sortBy: 'CPU busy' }),
    bargauge('CPU busy', 'Share of CPU time not idle, per node.', [q(`1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle",${I}}[${RI}]))`, '{{instance}}')], { unit: 'percentunit', w: 8, ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),
    bargauge('Memory used', 'Share of memory not available to new work (MemTotal − MemAvailable), per node.', [q(`1 - node_memory_MemAvailable_bytes{${I}} / node_memory_MemTotal_bytes{${I}}`, '{{instance}}')], { unit: 'percentunit', w: 8, ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),
    bargauge('Fullest filesystem', 'The most used filesystem of each node (space not available to unprivileged users).', [q(`max by (instance) (1 - node_filesystem_avail_bytes{${FS},${I}} / node_filesystem_size_bytes{${FS},${I}})`, '{{instance}}')], { unit: 'percentunit', w: 8, ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),

    row('Controller ingest'),
    timeseries('Ingest rate', 'Samples and log records durably stored by the controller, per second.', [
      q(`sum(rate(medic_ingest_samples_stored_total[${RI}]))`, 'samples'),
      q(`sum(rate(medic_ingest_log_records_stored_total[${RI}]))`, 'log records'),
    ], { unit: 'ops', w: 8 }),
    timeseries('Ack latency', 'From a batch\'s arrival at the controller to its ack being queued.', [
      q(`histogram_quantile(0.5, sum by (le) (rate(medic_ingest_ack_latency_seconds_bucket[${RI}])))`, 'p50'),
      q(`histogram_quantile(0.99, sum by (le) (rate(medic_ingest_ack_latency_seconds_bucket[${RI}])))`, 'p99'),
    ], { unit: 's', w: 8 }),
    timeseries('Store write duration', 'Time to durably write one group of batches to the store.', [
      q(`histogram_quantile(0.5, sum by (le) (rate(medic_store_write_duration_seconds_bucket[${RI}])))`, 'p50'),
      q(`histogram_quantile(0.99, sum by (le) (rate(medic_store_write_duration_seconds_bucket[${RI}])))`, 'p99'),
    ], { unit: 's', w: 8 }),
    timeseries('Ingest queue', 'Batches waiting for the store writer; agents are slowed down when it is full.', [q('sum(medic_ingest_queue_batches)', 'queued batches')], { unit: 'short', w: 8 }),
    timeseries('Delivery problems', 'Sequence gaps (batches never received), replayed duplicates and store write errors, per second.', [
      q(`sum(rate(medic_ingest_seq_gaps_total[${RI}]))`, 'seq gaps'),
      q(`sum(rate(medic_ingest_duplicate_batches_total[${RI}]))`, 'duplicates'),
      q(`sum(rate(medic_store_write_errors_total[${RI}]))`, 'store write errors'),
    ], { unit: 'ops', w: 8 }),
    timeseries('Rejections', 'Samples and agent streams the controller refused, by reason.', [
      q(`sum by (reason) (rate(medic_ingest_samples_rejected_total[${RI}]))`, 'samples: {{reason}}', { empty: REJECTS }),
      q(`sum by (reason) (rate(medic_ingest_streams_rejected_total[${RI}]))`, 'streams: {{reason}}', { empty: REJECTS }),
    ], { unit: 'ops', w: 8 }),
  ];
  return { vars, panels, d: dashboard({ uid: 'medic-fleet', title: 'Medic / Fleet overview', description: 'Every node Medic watches, the controller\'s ingest path and the telemetry store at a glance.', tags: ['fleet'], vars, panels }) };
}

// ---------------------------------------------------------------------------------------------
function node() {
  resetIds();
  const I = 'instance="$instance"';
  const vars = [queryVar('instance', 'Node', 'The agentd instance (Prometheus job medic-agent)', 'label_values(medic_agent_connected, instance)')];
  const cores = `count(node_cpu_seconds_total{mode="idle",${I}})`;
  const panels = [
    row('Overview'),
    stat('Uptime', 'Time since the node booted.', [q(`time() - node_boot_time_seconds{${I}}`, 'uptime')], { unit: 's', graph: 'none', decimals: 0 }),
    stat('CPU cores', 'Logical CPUs.', [q(cores, 'cores')], { graph: 'none' }),
    stat('Memory', 'Total memory.', [q(`node_memory_MemTotal_bytes{${I}}`, 'total')], { unit: 'bytes', graph: 'none' }),
    stat('CPU busy', 'Share of CPU time not idle.', [q(`1 - avg(rate(node_cpu_seconds_total{mode="idle",${I}}[${RI}]))`, 'busy')], { unit: 'percentunit', ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),
    stat('Memory used', 'Share of memory not available to new work.', [q(`1 - node_memory_MemAvailable_bytes{${I}} / node_memory_MemTotal_bytes{${I}}`, 'used')], { unit: 'percentunit', ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),
    stat('Agent streaming', 'Whether agentd has an open stream to the controller.', [q(`medic_agent_connected{${I}}`, 'connected')], { mappings: upDown, thresholds: steps(['red'], [1, 'green']), graph: 'none' }),

    row('CPU and memory'),
    timeseries('CPU by mode', 'CPU time by mode (idle excluded), as a share of all cores.', [q(`sum by (mode) (rate(node_cpu_seconds_total{mode!="idle",${I}}[${RI}])) / scalar(${cores})`, '{{mode}}')], { unit: 'percentunit', stack: true, min: 0 }),
    timeseries('Load', 'Run-queue load averages, with the core count for scale.', [
      q(`node_load1{${I}}`, '1m'),
      q(`node_load5{${I}}`, '5m'),
      q(`node_load15{${I}}`, '15m'),
      q(cores, 'cores'),
    ], { unit: 'short', min: 0 }),
    timeseries('Memory', 'Used (total − available), page cache, buffers and swap in use.', [
      q(`node_memory_MemTotal_bytes{${I}} - node_memory_MemAvailable_bytes{${I}}`, 'used'),
      q(`node_memory_Cached_bytes{${I}}`, 'cached'),
      q(`node_memory_Buffers_bytes{${I}}`, 'buffers'),
      q(`node_memory_SwapTotal_bytes{${I}} - node_memory_SwapFree_bytes{${I}}`, 'swap used'),
      q(`node_memory_MemTotal_bytes{${I}}`, 'total'),
    ], { unit: 'bytes', min: 0 }),
    timeseries('Pressure stall', 'Share of time some tasks waited for CPU, memory or IO (Linux PSI).', [
      q(`rate(node_pressure_cpu_waiting_seconds_total{${I}}[${RI}])`, 'cpu waiting'),
      q(`rate(node_pressure_memory_waiting_seconds_total{${I}}[${RI}])`, 'memory waiting'),
      q(`rate(node_pressure_io_waiting_seconds_total{${I}}[${RI}])`, 'io waiting'),
    ], { unit: 'percentunit', min: 0 }),

    row('Storage'),
    table('Filesystems', 'Capacity of each mounted filesystem.', [
      q(`node_filesystem_size_bytes{${FS},${I}}`),
      q(`node_filesystem_avail_bytes{${FS},${I}}`),
      q(`1 - node_filesystem_avail_bytes{${FS},${I}} / node_filesystem_size_bytes{${FS},${I}}`),
    ], { w: 12, columns: { A: 'Size', B: 'Available', C: 'Used' }, units: { A: 'bytes', B: 'bytes', C: 'percentunit' }, hide: ['instance'], sortBy: 'Used' }),
    timeseries('Filesystem used', 'Share of each filesystem not available to unprivileged users.', [q(`1 - node_filesystem_avail_bytes{${FS},${I}} / node_filesystem_size_bytes{${FS},${I}}`, '{{mountpoint}}')], { unit: 'percentunit', ...PCT }),
    timeseries('Disk throughput', 'Bytes read (+) and written (−) per second, per device.', [
      q(`rate(node_disk_read_bytes_total{${I}}[${RI}])`, 'read {{device}}'),
      q(`-rate(node_disk_written_bytes_total{${I}}[${RI}])`, 'write {{device}}'),
    ], { unit: 'Bps' }),
    timeseries('Disk utilisation', 'Share of time each device was busy with IO.', [q(`rate(node_disk_io_time_seconds_total{${I}}[${RI}])`, '{{device}}')], { unit: 'percentunit', ...PCT }),

    row('Network'),
    timeseries('Network traffic', 'Bytes received (+) and sent (−) per second, per interface.', [
      q(`rate(node_network_receive_bytes_total{${I}}[${RI}])`, 'rx {{device}}'),
      q(`-rate(node_network_transmit_bytes_total{${I}}[${RI}])`, 'tx {{device}}'),
    ], { unit: 'Bps' }),
    timeseries('Network errors and drops', 'Receive/transmit errors and dropped packets per second, per interface.', [
      q(`rate(node_network_receive_errs_total{${I}}[${RI}]) + rate(node_network_transmit_errs_total{${I}}[${RI}])`, 'errors {{device}}'),
      q(`rate(node_network_receive_drop_total{${I}}[${RI}]) + rate(node_network_transmit_drop_total{${I}}[${RI}])`, 'drops {{device}}'),
    ], { unit: 'pps', min: 0 }),

    row('Watched processes'),
    timeseries('Process CPU', 'CPU used by the processes given with --process, in cores.', [q(`rate(node_process_cpu_seconds_total{${I}}[${RI}])`, '{{process}}')], { unit: 'short', min: 0 }),
    timeseries('Process memory', 'Resident memory of the processes given with --process.', [q(`node_process_resident_memory_bytes{${I}}`, '{{process}}')], { unit: 'bytes', min: 0 }),

    row('Agent'),
    timeseries('Agent spool', 'Batches and bytes in agentd\'s disk spool not yet acked by the controller.', [
      q(`medic_agent_spool_batches{${I}}`, 'batches'),
    ], { unit: 'short', w: 8, min: 0 }),
    timeseries('Agent throughput', 'Batches sent and acked, samples collected and log records read, per second.', [
      q(`rate(medic_agent_batches_sent_total{${I}}[${RI}])`, 'batches sent'),
      q(`rate(medic_agent_batches_acked_total{${I}}[${RI}])`, 'batches acked'),
      q(`rate(medic_agent_samples_collected_total{${I}}[${RI}])`, 'samples collected'),
      q(`rate(medic_agent_log_records_read_total{${I}}[${RI}])`, 'log records read'),
    ], { unit: 'ops', w: 8 }),
    timeseries('Agent problems', 'Reconnects, spool append errors, dropped batches and failed collector rounds.', [
      q(`increase(medic_agent_reconnects_total{${I}}[${RI}])`, 'reconnects'),
      q(`increase(medic_agent_spool_append_errors_total{${I}}[${RI}])`, 'spool append errors'),
      q(`increase(medic_agent_spool_dropped_batches_total{${I}}[${RI}])`, 'dropped batches'),
      q(`increase(medic_agent_collector_errors_total{${I}}[${RI}])`, 'collector {{collector}} failed', { empty: COLLECTOR_ERR }),
    ], { unit: 'short', w: 8, min: 0 }),
  ];
  return { vars, panels, d: dashboard({ uid: 'medic-node', title: 'Medic / Node detail', description: 'One node as agentd sees it: CPU, memory, storage, network, watched processes and the agent itself.', tags: ['node'], vars, panels }) };
}

// ---------------------------------------------------------------------------------------------
function clickhouse() {
  resetIds();
  const I = 'instance=~"$instance"';
  const T = `${I},database=~"$database",table=~"$table"`;
  const vars = [
    queryVar('instance', 'Node', 'Nodes whose agentd watches a ClickHouse server (--clickhouse-url)', 'label_values(clickhouse_up, instance)', { multi: true, includeAll: true }),
    queryVar('database', 'Database', 'Databases with MergeTree tables', 'label_values(clickhouse_table_rows{instance=~"$instance"}, database)', { multi: true, includeAll: true }),
    queryVar('table', 'Table', 'Tables of the selected databases', 'label_values(clickhouse_table_rows{instance=~"$instance",database=~"$database"}, table)', { multi: true, includeAll: true }),
  ];
  const panels = [
    row('Server'),
    stat('Up', 'Whether the node\'s agent can query ClickHouse.', [q(`min(clickhouse_up{${I}})`, 'up')], { mappings: upDown, thresholds: steps(['red'], [1, 'green']), graph: 'none' }),
    stat('Uptime', 'Since the ClickHouse server started (the shortest among the selected nodes).', [q(`min(clickhouse_uptime_seconds{${I}})`, 'uptime')], { unit: 's', graph: 'none', decimals: 0 }),
    stat('Version', 'ClickHouse server version.', [q(`count by (version) (clickhouse_version_info{${I}})`, '{{version}}')], { graph: 'none', colorMode: 'none' }),
    stat('Running queries', 'Queries executing now.', [q(`sum(clickhouse_metrics_Query{${I}})`, 'queries')], { thresholds: steps(['green'], [50, 'orange'], [80, 'red']) }),
    stat('Running merges', 'Background merges executing now.', [q(`sum(clickhouse_merges_running{${I}})`, 'merges')]),
    stat('Connections', 'Open TCP and HTTP client connections.', [q(`sum(clickhouse_metrics_TCPConnection{${I}}) + sum(clickhouse_metrics_HTTPConnection{${I}})`, 'connections')]),

    row('Queries'),
    timeseries('Queries by type', 'Finished queries per second from system.query_log, by type (QueryFinish, exceptions…).', [q(`sum by (type) (rate(clickhouse_query_log_queries_total{${I}}[${RI}]))`, '{{type}}')], { unit: 'qps', w: 8 }),
    timeseries('Query duration', 'Query duration quantiles of the queries finished in each collection round (system.query_log); the maximum over the interval, since rounds without finished queries report none.', [q(`max by (quantile) (max_over_time(clickhouse_query_duration_seconds{${I}}[${RI}]))`, 'p{{quantile}}')], { unit: 's', w: 8 }),
    timeseries('Failed queries', 'Queries that failed, per second.', [
      q(`sum(rate(clickhouse_failed_queries_total{${I}}[${RI}]))`, 'failed (query_log)'),
      q(`sum(rate(clickhouse_events_FailedQuery_total{${I}}[${RI}]))`, 'FailedQuery event'),
    ], { unit: 'qps', w: 8, min: 0 }),
    timeseries('Selects and inserts', 'SELECT and INSERT queries started per second (ProfileEvents).', [
      q(`sum(rate(clickhouse_events_SelectQuery_total{${I}}[${RI}]))`, 'select'),
      q(`sum(rate(clickhouse_events_InsertQuery_total{${I}}[${RI}]))`, 'insert'),
    ], { unit: 'qps', w: 8, min: 0 }),
    timeseries('Memory', 'Memory tracked by ClickHouse and the server\'s resident set.', [
      q(`sum by (instance) (clickhouse_metrics_MemoryTracking{${I}})`, 'tracked {{instance}}'),
      q(`sum by (instance) (clickhouse_async_metrics_MemoryResident{${I}})`, 'resident {{instance}}'),
    ], { unit: 'bytes', w: 8, min: 0 }),
    timeseries('Errors', 'Errors counted by ClickHouse (system.errors), by name.', [q(`sum by (name) (increase(clickhouse_errors_total{${I}}[${RI}]))`, '{{name}}', { empty: CH_ERRORS })], { unit: 'short', w: 8, min: 0 }),

    row('Tables'),
    table('Tables', 'Rows, size on disk, active parts and the largest partition\'s part count of each table.', [
      q(`sum by (instance, database, table) (clickhouse_table_rows{${T}})`),
      q(`sum by (instance, database, table) (clickhouse_table_bytes{${T}})`),
      q(`sum by (instance, database, table) (clickhouse_table_parts{${T}})`),
      q(`max by (instance, database, table) (clickhouse_table_max_parts_per_partition{${T}})`),
    ], { columns: { A: 'Rows', B: 'Bytes', C: 'Parts', D: 'Max parts/partition' }, units: { A: 'short', B: 'bytes', C: 'short', D: 'short' }, sortBy: 'Bytes' }),
    bargauge('Max parts per partition', 'Tables closest to "too many parts" (inserts are delayed at parts_to_delay_insert, 1000 by default, and rejected at parts_to_throw_insert).', [q(`topk(10, max by (database, table) (clickhouse_table_max_parts_per_partition{${T}}))`, '{{database}}.{{table}}')], { unit: 'short', w: 8, min: 0, max: 1000, thresholds: steps(['green'], [300, 'orange'], [1000, 'red']) }),
    timeseries('Table size', 'Bytes on disk per table.', [q(`sum by (database, table) (clickhouse_table_bytes{${T}})`, '{{database}}.{{table}}')], { unit: 'bytes', w: 8, min: 0 }),
    timeseries('Table rows', 'Rows per table.', [q(`sum by (database, table) (clickhouse_table_rows{${T}})`, '{{database}}.{{table}}')], { unit: 'short', w: 8, min: 0 }),

    row('Merges, mutations and disks'),
    timeseries('Merges and mutations', 'Running merges, running/stuck/failed mutations (tables that have had mutations) and the background pool in use.', [
      q(`sum(clickhouse_merges_running{${I}})`, 'merges'),
      q(`sum(clickhouse_mutations_running{${I}})`, 'mutations running'),
      q(`sum(clickhouse_mutations_stuck{${I}})`, 'mutations stuck'),
      q(`sum(clickhouse_mutations_failed{${I}})`, 'mutations failed'),
      q(`sum(clickhouse_metrics_BackgroundMergesAndMutationsPoolTask{${I}})`, 'pool tasks'),
    ], { unit: 'short', w: 8, min: 0 }),
    bargauge('Disk used', 'Share of each ClickHouse disk (system.disks) in use.', [q(`1 - clickhouse_disk_free_bytes{${I}} / clickhouse_disk_total_bytes{${I}}`, '{{instance}} {{disk}}')], { unit: 'percentunit', w: 8, ...PCT, thresholds: steps(['green'], [0.8, 'orange'], [0.9, 'red']) }),
    timeseries('Detached parts', 'Parts ClickHouse detached (broken, unexpected…), by reason.', [q(`sum by (reason) (clickhouse_detached_parts{${I}})`, '{{reason}}', { empty: DETACHED })], { unit: 'short', w: 8, min: 0 }),

    row('Replication'),
    timeseries('Replica delay', 'How far each replicated table lags behind.', [q(`max by (database, table) (clickhouse_replica_absolute_delay_seconds{${T}})`, '{{database}}.{{table}}', { empty: REPLICA })], { unit: 's', w: 8, min: 0 }),
    timeseries('Replication queue', 'Entries in each replicated table\'s replication queue.', [q(`sum by (database, table) (clickhouse_replica_queue_size{${T}})`, '{{database}}.{{table}}', { empty: REPLICA })], { unit: 'short', w: 8, min: 0 }),
    stat('Read-only replicas', 'Replicated tables in read-only mode (lost Keeper session or metadata).', [q(`sum(clickhouse_replica_is_readonly{${T}})`, 'read-only', { empty: REPLICA })], { w: 8, h: 8, thresholds: steps(['green'], [1, 'red']) }),

    row('Collection'),
    timeseries('Collection round', 'Time agentd takes to collect ClickHouse metrics, and its failed rounds.', [
      q(`max by (instance) (clickhouse_scrape_duration_seconds{${I}})`, 'duration {{instance}}'),
      q(`sum by (instance) (increase(clickhouse_scrape_errors_total{${I}}[${RI}]))`, 'errors {{instance}}'),
    ], { unit: 's', w: 24 }),
  ];
  return { vars, panels, d: dashboard({ uid: 'medic-clickhouse', title: 'Medic / ClickHouse', description: 'ClickHouse servers as their node\'s agentd sees them: queries, tables and parts, merges and mutations, disks and replication.', tags: ['clickhouse'], vars, panels }) };
}

// ---------------------------------------------------------------------------------------------
function anomalies() {
  resetIds();
  const N = 'node=~"$node"';
  const I = 'instance=~"$instance"';
  const vars = [
    queryVar('node', 'Node', 'Nodes the controller scores (Medic node names)', 'label_values(medic_anomaly_score, node)', { multi: true, includeAll: true, empty: ANOMALY }),
    queryVar('instance', 'Agent', 'agentd instances, for the Prometheus-side trends', 'label_values(medic_agent_connected, instance)', { multi: true, includeAll: true }),
  ];
  const panels = [
    row('Anomalies'),
    stat('Anomalous series', 'Series the controller currently scores as anomalous (score ≥ 1).', [q(`count(medic_anomaly_score{${N}} >= 1) or vector(0)`, 'anomalous')], { w: 6, thresholds: steps(['green'], [1, 'orange'], [10, 'red']) }),
    stat('Nodes with anomalies', 'Nodes with at least one anomalous series.', [q(`count(count by (node) (medic_anomaly_score{${N}} >= 1)) or vector(0)`, 'nodes')], { w: 6, thresholds: steps(['green'], [1, 'orange']) }),
    stat('Soonest exhaustion', 'The shortest forecast time until any resource of the selected nodes runs out.', [q(`min(medic_forecast_exhaustion_seconds{${N}})`, 'soonest', { empty: FORECAST })], { w: 6, unit: 's', thresholds: steps(['red'], [86400, 'orange'], [604800, 'green']) }),
    stat('Scored series', 'Series the controller scores for anomalies.', [q(`count(medic_anomaly_score{${N}})`, 'scored', { empty: ANOMALY })], { w: 6, graph: 'none' }),
    timeseries('Anomaly score', 'Anomaly score per node and metric (≥ 1 is anomalous).', [q(`medic_anomaly_score{${N}}`, '{{node}} {{metric}}', { empty: ANOMALY })], { unit: 'short', w: 24, min: 0, thresholds: steps(['green'], [1, 'red']), custom: { thresholdsStyle: { mode: 'dashed' } } }),
    table('Top anomalies', 'The highest scores now.', [q(`topk(20, medic_anomaly_score{${N}})`, '', { empty: ANOMALY })], { w: 12, columns: { A: 'Score' }, hide: ['instance'], sortBy: 'Score' }),
    bargauge('Anomalies by metric', 'Anomalous series per metric, all selected nodes.', [q(`count by (metric) (medic_anomaly_score{${N}} >= 1)`, '{{metric}}', { empty: ANOMALY })], { w: 12, thresholds: steps(['orange']) }),

    row('Forecasts'),
    bargauge('Time to exhaustion', 'Forecast time until each resource runs out, soonest first.', [q(`bottomk(15, medic_forecast_exhaustion_seconds{${N}})`, '{{node}} {{resource}}', { empty: FORECAST })], { unit: 's', w: 12, thresholds: steps(['red'], [86400, 'orange'], [604800, 'green']) }),
    timeseries('Forecast over time', 'How the forecast time to exhaustion moves per node and resource.', [q(`medic_forecast_exhaustion_seconds{${N}}`, '{{node}} {{resource}}', { empty: FORECAST })], { unit: 's', w: 12, min: 0 }),
    timeseries('Filesystem trend (Prometheus linear forecast)', 'Available bytes each filesystem is projected to have in 24 h by a linear fit over the last hour: a cross-check for Medic\'s forecasts that needs no controller.', [q(`predict_linear(node_filesystem_avail_bytes{${FS},${I}}[1h], 86400)`, '{{instance}} {{mountpoint}}')], { unit: 'bytes', w: 12 }),
    timeseries('ClickHouse disk trend (Prometheus linear forecast)', 'Free bytes each ClickHouse disk is projected to have in 24 h by a linear fit over the last hour.', [q(`predict_linear(clickhouse_disk_free_bytes{${I}}[1h], 86400)`, '{{instance}} {{disk}}')], { unit: 'bytes', w: 12 }),
  ];
  return { vars, panels, d: dashboard({ uid: 'medic-anomalies', title: 'Medic / Anomalies and forecasts', description: 'What the controller finds unusual and when it expects resources to run out.', tags: ['anomalies', 'forecasts'], vars, panels }) };
}

// ---------------------------------------------------------------------------------------------
function remediation() {
  resetIds();
  const R = 'rule=~"$rule"';
  const vars = [queryVar('rule', 'Rule', 'Remediation rules that have acted', 'label_values(medic_actions_total, rule)', { multi: true, includeAll: true, empty: ACTIONS })];
  const panels = [
    row('Now'),
    stat('Pending approval', 'Actions waiting for a human to approve them.', [q('sum(medic_actions_pending_approval)', 'pending')], { w: 6, thresholds: steps(['green'], [1, 'orange']) }),
    stat('Rules loaded', 'Whether the last reload of the rule files succeeded (a failed reload keeps the previous rules).', [q('min(medic_rules_last_reload_success)', 'reload', { empty: RULES })], { w: 6, graph: 'none', mappings: [{ type: 'value', options: { 0: { text: 'FAILED', color: 'red', index: 0 }, 1: { text: 'OK', color: 'green', index: 1 } } }], thresholds: steps(['red'], [1, 'green']) }),
    stat('Actions (range)', 'Actions taken in the selected time range.', [q(`sum(increase(medic_actions_total{${R}}[$__range]))`, 'actions', { empty: ACTIONS })], { w: 6, decimals: 0 }),
    stat('Failed, rolled back or escalated (range)', 'Actions that did not fix the problem in the selected time range.', [q(`sum(increase(medic_actions_total{${R},outcome=~"failed|rolled_back|escalated"}[$__range])) or vector(0)`, 'not fixed')], { w: 6, decimals: 0, thresholds: steps(['green'], [1, 'red']) }),

    row('History'),
    timeseries('Actions by outcome', 'Actions taken per interval, by outcome.', [q(`sum by (outcome) (increase(medic_actions_total{${R}}[${RI}]))`, '{{outcome}}', { empty: ACTIONS })], { unit: 'short', stack: true, min: 0, custom: { drawStyle: 'bars' } }),
    timeseries('Actions by rule', 'Actions taken per interval, by rule.', [q(`sum by (rule) (increase(medic_actions_total{${R}}[${RI}]))`, '{{rule}}', { empty: ACTIONS })], { unit: 'short', stack: true, min: 0, custom: { drawStyle: 'bars' } }),
    table('Actions per rule, action and outcome', 'What each rule did in the selected time range.', [q(`sum by (rule, action, outcome) (increase(medic_actions_total{${R}}[$__range])) > 0`, '', { empty: ACTIONS })], { w: 12, columns: { A: 'Actions' }, sortBy: 'Actions', decimals: 0 }),
    bargauge('Not fixed, by rule', 'Failed, rolled back or escalated actions per rule in the selected time range.', [q(`sum by (rule) (increase(medic_actions_total{${R},outcome=~"failed|rolled_back|escalated"}[$__range])) > 0`, '{{rule}}', { empty: ACTIONS })], { w: 12, decimals: 0, thresholds: steps(['orange'], [3, 'red']) }),
    table('Firing alerts', 'Prometheus alerts firing now: what Medic could not (yet) fix on its own pages a human.', [q('ALERTS{alertstate="firing"}', '', { empty: ALERTS })], { w: 24, columns: { A: 'Firing' }, hide: ['alertstate', 'Value #A'] }),
  ];
  return { vars, panels, d: dashboard({ uid: 'medic-remediation', title: 'Medic / Remediation actions', description: 'What Medic\'s remediation playbooks did, how it turned out and what waits for a human.', tags: ['remediation'], vars, panels }) };
}

export const all = [
  ['fleet-overview.json', fleet],
  ['node-detail.json', node],
  ['clickhouse.json', clickhouse],
  ['anomalies-forecasts.json', anomalies],
  ['remediation-actions.json', remediation],
];
