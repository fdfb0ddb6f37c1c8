//! Names for common ClickHouse failure lines, so rules can match `signature=too_many_parts`
//! instead of re-parsing messages that change wording between versions.
//!
//! The error code decides first (it is stable across versions and languages of the message);
//! without a code, or with one that says little on its own (KEEPER_EXCEPTION, NETWORK_ERROR), a
//! few substring checks decide. Debug and trace lines — most of a busy server's log — are not
//! looked at, and informational lines only for the one signature logged at that level (inserts
//! being delayed), so the cost stays at a handful of substring searches per warning or error.
//!
//! The names are listed in README.md ("ClickHouse log signatures"); keep the two in sync.

use medic_proto::v1::LogLevel;

pub const TOO_MANY_PARTS: &str = "too_many_parts";
pub const TOO_MANY_PARTITIONS: &str = "too_many_partitions";
pub const INSERTS_DELAYED: &str = "inserts_delayed";
pub const MEMORY_LIMIT_EXCEEDED: &str = "memory_limit_exceeded";
pub const CANNOT_ALLOCATE_MEMORY: &str = "cannot_allocate_memory";
pub const TABLE_READ_ONLY: &str = "table_read_only";
pub const KEEPER_SESSION_EXPIRED: &str = "keeper_session_expired";
pub const KEEPER_UNAVAILABLE: &str = "keeper_unavailable";
pub const KEEPER_ERROR: &str = "keeper_error";
pub const NO_SPACE_LEFT: &str = "no_space_left";
pub const TOO_MANY_OPEN_FILES: &str = "too_many_open_files";
pub const TOO_MANY_SIMULTANEOUS_QUERIES: &str = "too_many_simultaneous_queries";
pub const TIMEOUT_EXCEEDED: &str = "timeout_exceeded";
pub const REPLICA_UNAVAILABLE: &str = "replica_unavailable";
pub const DATA_CORRUPTION: &str = "data_corruption";
pub const CANNOT_PARSE: &str = "cannot_parse";
pub const NETWORK_ERROR: &str = "network_error";
pub const DISTRIBUTED_SEND_FAILED: &str = "distributed_send_failed";
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";
pub const SERVER_CRASH: &str = "server_crash";

/// Every signature, for documentation and tests.
pub const ALL: [&str; 20] = [
    TOO_MANY_PARTS,
    TOO_MANY_PARTITIONS,
    INSERTS_DELAYED,
    MEMORY_LIMIT_EXCEEDED,
    CANNOT_ALLOCATE_MEMORY,
    TABLE_READ_ONLY,
    KEEPER_SESSION_EXPIRED,
    KEEPER_UNAVAILABLE,
    KEEPER_ERROR,
    NO_SPACE_LEFT,
    TOO_MANY_OPEN_FILES,
    TOO_MANY_SIMULTANEOUS_QUERIES,
    TIMEOUT_EXCEEDED,
    REPLICA_UNAVAILABLE,
    DATA_CORRUPTION,
    CANNOT_PARSE,
    NETWORK_ERROR,
    DISTRIBUTED_SEND_FAILED,
    AUTHENTICATION_FAILED,
    SERVER_CRASH,
];

/// The signature of one log entry: its level, the `Code: N.` of its message if any, its logger
/// (empty for lines in other formats) and its message.
pub fn classify(level: LogLevel, code: Option<u32>, logger: &str, message: &str) -> Option<&'static str> {
    match level {
        LogLevel::Trace | LogLevel::Debug => None,
        // ClickHouse logs insert throttling at Information; nothing else of interest is logged
        // that low, and informational lines are many.
        LogLevel::Info | LogLevel::Notice => message.contains("Delaying inserting block").then_some(INSERTS_DELAYED),
        _ => code.and_then(|c| by_code(c, logger, message)).or_else(|| by_text(logger, message)),
    }
}

fn by_code(code: u32, logger: &str, m: &str) -> Option<&'static str> {
    Some(match code {
        // TOO_MANY_PARTS is also thrown for an INSERT spanning too many partitions.
        252 if m.contains("Too many partitions") => TOO_MANY_PARTITIONS,
        252 => TOO_MANY_PARTS,
        241 => MEMORY_LIMIT_EXCEEDED,
        173 => CANNOT_ALLOCATE_MEMORY,
        242 => TABLE_READ_ONLY,
        243 => NO_SPACE_LEFT,
        202 => TOO_MANY_SIMULTANEOUS_QUERIES,
        159 => TIMEOUT_EXCEEDED,
        // KEEPER_EXCEPTION covers everything Keeper says: the text tells which.
        999 => keeper(m).unwrap_or(KEEPER_ERROR),
        // NO_ZOOKEEPER: no Keeper configured or reachable.
        225 => KEEPER_UNAVAILABLE,
        // ALL_REPLICAS_ARE_STALE, TOO_FEW_LIVE_REPLICAS, NO_REPLICA_HAS_PART.
        369 | 285 | 234 => REPLICA_UNAVAILABLE,
        // CHECKSUM_DOESNT_MATCH, CORRUPTED_DATA.
        40 | 246 => DATA_CORRUPTION,
        // CANNOT_PARSE_TEXT, _QUOTED_STRING, _INPUT_ASSERTION_FAILED, _DATE, _DATETIME, _NUMBER.
        6 | 26 | 27 | 38 | 41 | 72 => CANNOT_PARSE,
        // NETWORK_ERROR, SOCKET_TIMEOUT, ALL_CONNECTION_TRIES_FAILED.
        210 | 209 | 279 if distributed_sender(logger) => DISTRIBUTED_SEND_FAILED,
        210 | 209 | 279 => NETWORK_ERROR,
        516 => AUTHENTICATION_FAILED,
        _ => return None,
    })
}

fn keeper(m: &str) -> Option<&'static str> {
    if m.contains("Session expired") || m.contains("ZSESSIONEXPIRED") || m.contains("session has expired") {
        Some(KEEPER_SESSION_EXPIRED)
    } else if m.contains("Connection loss")
        || m.contains("ZCONNECTIONLOSS")
        || m.contains("ZOPERATIONTIMEOUT")
        || m.contains("NO_ZOOKEEPER")
    {
        Some(KEEPER_UNAVAILABLE)
    } else if m.contains("Coordination::Exception") || m.contains("KEEPER_EXCEPTION") {
        Some(KEEPER_ERROR)
    } else {
        None
    }
}

/// The background senders of Distributed tables (`db.dist.DirectoryMonitor.shard`, since 23.x
/// `db.dist.DistributedInsertQueue…` / `DistributedAsyncInsert…`).
fn distributed_sender(logger: &str) -> bool {
    logger.contains("DirectoryMonitor") || logger.contains("DistributedInsert") || logger.contains("DistributedAsync")
}

fn any(m: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| m.contains(n))
}

fn by_text(logger: &str, m: &str) -> Option<&'static str> {
    if logger == "BaseDaemon" && any(m, &["Received signal", "Terminate called"]) {
        return Some(SERVER_CRASH);
    }
    if m.contains("Too many partitions for single INSERT") {
        return Some(TOO_MANY_PARTITIONS);
    }
    if any(m, &["Too many parts", "TOO_MANY_PARTS"]) {
        return Some(TOO_MANY_PARTS);
    }
    if m.contains("Delaying inserting block") {
        return Some(INSERTS_DELAYED);
    }
    if m.contains("MEMORY_LIMIT_EXCEEDED") || (m.contains("Memory limit (") && m.contains("exceeded")) {
        return Some(MEMORY_LIMIT_EXCEEDED);
    }
    if any(m, &["Cannot allocate memory", "CANNOT_ALLOCATE_MEMORY", "std::bad_alloc"]) {
        return Some(CANNOT_ALLOCATE_MEMORY);
    }
    if any(m, &["No space left on device", "NOT_ENOUGH_SPACE", "not enough space"]) {
        return Some(NO_SPACE_LEFT);
    }
    if m.contains("Too many open files") {
        return Some(TOO_MANY_OPEN_FILES);
    }
    // Before the read-only check: an expired session is what makes replicas read-only, and the
    // line saying so mentions both.
    if let Some(k) = keeper(m) {
        return Some(k);
    }
    if any(m, &["Table is in readonly mode", "TABLE_IS_READ_ONLY"]) {
        return Some(TABLE_READ_ONLY);
    }
    if any(m, &["Too many simultaneous queries", "TOO_MANY_SIMULTANEOUS_QUERIES", "max_concurrent_queries"]) {
        return Some(TOO_MANY_SIMULTANEOUS_QUERIES);
    }
    if any(m, &["ALL_REPLICAS_ARE_STALE", "TOO_FEW_LIVE_REPLICAS", "NO_REPLICA_HAS_PART", "No active replica"]) {
        return Some(REPLICA_UNAVAILABLE);
    }
    if any(
        m,
        &[
            "Checksum doesn't match",
            "CHECKSUM_DOESNT_MATCH",
            "CORRUPTED_DATA",
            "broken part",
            "Broken part",
            "looks broken",
        ],
    ) {
        return Some(DATA_CORRUPTION);
    }
    // Before the timeout check: a socket timeout reads "Timeout exceeded while reading from socket".
    if any(
        m,
        &[
            "NETWORK_ERROR",
            "Connection refused",
            "ALL_CONNECTION_TRIES_FAILED",
            "SOCKET_TIMEOUT",
            "Connection reset by peer",
        ],
    ) {
        return Some(if distributed_sender(logger) { DISTRIBUTED_SEND_FAILED } else { NETWORK_ERROR });
    }
    if any(m, &["Timeout exceeded", "TIMEOUT_EXCEEDED"]) {
        return Some(TIMEOUT_EXCEEDED);
    }
    if any(m, &["CANNOT_PARSE_", "Cannot parse"]) {
        return Some(CANNOT_PARSE);
    }
    if any(m, &["Authentication failed", "AUTHENTICATION_FAILED"]) {
        return Some(AUTHENTICATION_FAILED);
    }
    if distributed_sender(logger) && m.contains("Exception") {
        return Some(DISTRIBUTED_SEND_FAILED);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::clickhouse::{error_code, parse};
    use super::*;

    /// The signature of a full server log line, through the same parsing as the tailer.
    fn sig(line: &str) -> Option<&'static str> {
        let p = parse(line).unwrap_or_else(|| panic!("not a ClickHouse log line: {line}"));
        classify(p.level, error_code(p.message).and_then(|c| c.parse().ok()), p.logger, p.message)
    }

    /// Real server log lines (from ClickHouse 22.x–24.x logs and their source), one or more per
    /// signature.
    const LINES: &[(&str, &str)] = &[
        (
            TOO_MANY_PARTS,
            "2024.01.15 10:23:45.123456 [ 12345 ] {8f3c9a1e-0000-4000-8000-000000000001} <Error> executeQuery: Code: 252. DB::Exception: Too many parts (300 with average size of 1.21 MiB) in table 'default.events (3b9f1c2e-8a47-4a4f-9d59-5c1f1f6f3a10)'. Merges are processing significantly slower than inserts. (TOO_MANY_PARTS) (version 24.3.2.23 (official build)) (from 10.0.0.5:51234) (in query: INSERT INTO events FORMAT RowBinary), Stack trace (when copying this message, always include the lines below):",
        ),
        (
            TOO_MANY_PARTS,
            "2023.06.02 08:00:01.000100 [ 811 ] {} <Error> TCPHandler: Code: 252. DB::Exception: Too many parts (600). Merges are processing significantly slower than inserts. (TOO_MANY_PARTS) (version 23.3.1.2823 (official build))",
        ),
        (
            TOO_MANY_PARTITIONS,
            "2023.09.12 14:02:11.731102 [ 3361 ] {c0a8b2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d} <Error> executeQuery: Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). The limit is controlled by 'max_partitions_per_insert_block' setting. Large number of partitions is a common misconception. It will lead to severe negative performance impact, including slow server startup, slow INSERT queries and slow SELECT queries. Recommended total number of partitions for a table is under 1000..10000. Please note, that partitioning is not intended to speed up SELECT queries (ORDER BY key is sufficient to make range queries fast). Partitions are intended for data manipulation (DROP PARTITION, etc). (TOO_MANY_PARTS) (version 23.8.2.7 (official build)) (from [::ffff:10.1.2.3]:40312) (in query: INSERT INTO logs FORMAT JSONEachRow)",
        ),
        (
            INSERTS_DELAYED,
            "2024.01.15 10:23:44.001122 [ 12345 ] {8f3c9a1e-0000-4000-8000-000000000001} <Information> default.events (3b9f1c2e-8a47-4a4f-9d59-5c1f1f6f3a10): Delaying inserting block by 4.55 ms. because there are 158 parts and their average size is 1.20 MiB",
        ),
        (
            MEMORY_LIMIT_EXCEEDED,
            "2023.04.11 16:45:03.452310 [ 29801 ] {5d5e7c38-1f0e-4c8b-9a7e-3e5f0b3d2a11} <Error> executeQuery: Code: 241. DB::Exception: Memory limit (total) exceeded: would use 28.13 GiB (attempt to allocate chunk of 4219285 bytes), maximum: 28.13 GiB. OvercommitTracker decision: Query was selected to stop by OvercommitTracker.: While executing AggregatingTransform. (MEMORY_LIMIT_EXCEEDED) (version 23.3.1.2823 (official build)) (from 172.17.0.1:56284) (in query: SELECT user_id, count() FROM hits GROUP BY user_id)",
        ),
        (
            MEMORY_LIMIT_EXCEEDED,
            "2022.11.02 09:12:44.120000 [ 771 ] {a1} <Error> MergeTreeBackgroundExecutor: Exception while executing background task {b2}: Code: 241. DB::Exception: Memory limit (for query) exceeded: would use 9.31 GiB (attempt to allocate chunk of 1048576 bytes), maximum: 9.31 GiB: (while reading column payload): While executing MergeTreeSequentialSource. (MEMORY_LIMIT_EXCEEDED) (version 22.8.9.24 (official build))",
        ),
        (
            CANNOT_ALLOCATE_MEMORY,
            "2023.02.20 03:14:15.926535 [ 4242 ] {} <Error> void DB::MergeTreeBackgroundExecutor<DB::DynamicRuntimeQueue>::routine(TaskRuntimeDataPtr) [Queue = DB::DynamicRuntimeQueue]: Code: 173. DB::ErrnoException: Allocator: Cannot mmap 128.00 MiB., errno: 12, strerror: Cannot allocate memory. (CANNOT_ALLOCATE_MEMORY) (version 23.1.3.5 (official build))",
        ),
        (
            TABLE_READ_ONLY,
            "2023.08.30 11:11:11.111111 [ 5150 ] {e5b7} <Error> executeQuery: Code: 242. DB::Exception: Table is in readonly mode (replica path: /clickhouse/tables/01/events/replicas/ch-1). (TABLE_IS_READ_ONLY) (version 23.8.2.7 (official build)) (from 10.0.0.9:43110) (in query: INSERT INTO events FORMAT RowBinary)",
        ),
        (
            KEEPER_SESSION_EXPIRED,
            "2023.08.30 11:10:58.000042 [ 901 ] {} <Error> default.events (ReplicatedMergeTreeRestartingThread): Couldn't start replication (table will be in readonly mode): Coordination::Exception: Session expired (Session expired). (KEEPER_EXCEPTION)",
        ),
        (
            KEEPER_SESSION_EXPIRED,
            "2023.08.30 11:10:57.990001 [ 902 ] {} <Warning> default.events (ReplicatedMergeTreeRestartingThread): ZooKeeper session has expired. Switching to a new session.",
        ),
        (
            KEEPER_SESSION_EXPIRED,
            "2024.02.01 00:00:01.500000 [ 77 ] {} <Error> void DB::StorageReplicatedMergeTree::queueUpdatingTask(): Code: 999. Coordination::Exception: Session expired (Session expired). (KEEPER_EXCEPTION), Stack trace (when copying this message, always include the lines below):",
        ),
        (
            KEEPER_UNAVAILABLE,
            "2024.02.01 00:00:00.250000 [ 77 ] {} <Error> void DB::StorageReplicatedMergeTree::mergeSelectingTask(): Code: 999. Coordination::Exception: Connection loss, path: /clickhouse/tables/01/events/log. (KEEPER_EXCEPTION), Stack trace (when copying this message, always include the lines below):",
        ),
        (
            KEEPER_UNAVAILABLE,
            "2024.02.01 00:00:02.000000 [ 1 ] {} <Error> Application: Code: 225. DB::Exception: Cannot use ZooKeeper: no Keeper configured. (NO_ZOOKEEPER) (version 24.1.2.5 (official build))",
        ),
        (
            KEEPER_ERROR,
            "2024.02.01 00:00:03.000000 [ 78 ] {} <Error> default.events (ReplicatedMergeTreeQueue): Code: 999. Coordination::Exception: Transaction failed (Node exists): Op #0, path: /clickhouse/tables/01/events/blocks/202402_123_123_0. (KEEPER_EXCEPTION)",
        ),
        (
            NO_SPACE_LEFT,
            "2023.07.04 22:01:13.555000 [ 3301 ] {} <Error> void DB::MergeTreeBackgroundExecutor<DB::MergeMutateRuntimeQueue>::routine(TaskRuntimeDataPtr) [Queue = DB::MergeMutateRuntimeQueue]: Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE) (version 23.6.1.1524 (official build))",
        ),
        (
            NO_SPACE_LEFT,
            "2023.07.04 22:01:14.000000 [ 3302 ] {d1} <Error> executeQuery: Code: 74. DB::ErrnoException: Cannot write to file /var/lib/clickhouse/store/3b9/3b9f1c2e-8a47-4a4f-9d59-5c1f1f6f3a10/tmp_insert_202307_1_1_0/data.bin, errno: 28, strerror: No space left on device. (CANNOT_WRITE_TO_FILE_DESCRIPTOR) (version 23.6.1.1524 (official build))",
        ),
        (
            TOO_MANY_OPEN_FILES,
            "2023.05.05 05:05:05.050505 [ 66 ] {} <Error> ServerErrorHandler: Poco::Exception. Code: 1000, e.code() = 24, Net Exception: Too many open files (version 23.4.2.11 (official build))",
        ),
        (
            TOO_MANY_SIMULTANEOUS_QUERIES,
            "2023.10.10 10:10:10.101010 [ 4444 ] {f00} <Error> executeQuery: Code: 202. DB::Exception: Too many simultaneous queries. Maximum: 100. (TOO_MANY_SIMULTANEOUS_QUERIES) (version 23.9.1.1854 (official build)) (from 10.0.0.7:50022) (in query: SELECT 1)",
        ),
        (
            TIMEOUT_EXCEEDED,
            "2023.10.10 10:11:40.000001 [ 4445 ] {f01} <Error> executeQuery: Code: 159. DB::Exception: Timeout exceeded: elapsed 30.001043 seconds, maximum: 30. (TIMEOUT_EXCEEDED) (version 23.9.1.1854 (official build)) (from 10.0.0.7:50023) (in query: SELECT count() FROM big WHERE x LIKE '%a%')",
        ),
        (
            REPLICA_UNAVAILABLE,
            "2023.03.03 03:03:03.030303 [ 333 ] {q1} <Error> executeQuery: Code: 285. DB::Exception: Number of alive replicas (1) is less than requested quorum (2/2). (TOO_FEW_LIVE_REPLICAS) (version 23.2.4.12 (official build)) (from 10.0.0.2:41000) (in query: INSERT INTO events FORMAT RowBinary)",
        ),
        (
            REPLICA_UNAVAILABLE,
            "2023.03.03 03:03:04.000000 [ 334 ] {} <Error> default.events (ReplicatedMergeTreeQueue): Code: 234. DB::Exception: No active replica has part 202303_10_10_0 or covering part (cannot execute queue-0000012345: GET_PART with virtual parts [202303_10_10_0]). (NO_REPLICA_HAS_PART) (version 23.2.4.12 (official build))",
        ),
        (
            REPLICA_UNAVAILABLE,
            "2023.03.03 03:03:05.000000 [ 335 ] {q2} <Error> executeQuery: Code: 369. DB::Exception: Local replica of shard 1 is stale (delay: 301s.), but no other replica configured. (ALL_REPLICAS_ARE_STALE) (version 23.2.4.12 (official build))",
        ),
        (
            DATA_CORRUPTION,
            "2022.12.12 12:12:12.121212 [ 1212 ] {} <Error> default.events (ReplicatedMergeTreePartCheckThread): Code: 40. DB::Exception: Checksum doesn't match: corrupted data. Reference: 0x4a5b6c7d8e9f0a1bc2d3e4f5a6b7c8d9. Actual: 0x0f1e2d3c4b5a69788796a5b4c3d2e1f0. Size of compressed block: 65536. (CHECKSUM_DOESNT_MATCH) (version 22.12.1.1752 (official build))",
        ),
        (
            DATA_CORRUPTION,
            "2022.12.12 12:12:13.000000 [ 1213 ] {} <Error> default.events (ReplicatedMergeTreePartCheckThread): Part 202212_5_5_0 looks broken. Removing it and will try to fetch.",
        ),
        (
            DATA_CORRUPTION,
            "2022.12.12 12:12:14.000000 [ 1 ] {} <Warning> default.events (3b9f1c2e-8a47-4a4f-9d59-5c1f1f6f3a10): Detaching broken part /var/lib/clickhouse/store/3b9/3b9f1c2e-8a47-4a4f-9d59-5c1f1f6f3a10/202212_6_6_0 (size: 1.23 MiB). If it happened after update, it is likely because of backward incompatibility. You need to resolve this manually",
        ),
        (
            CANNOT_PARSE,
            "2023.11.11 11:11:11.111111 [ 999 ] {p1} <Error> executeQuery: Code: 27. DB::ParsingException: Cannot parse input: expected '\\t' before: 'abc\\n': (at row 1)\n: Row 1:\nColumn 0,   name: x, type: UInt64, ERROR: text \"abc<LINE FEED>\" is not like UInt64. (CANNOT_PARSE_INPUT_ASSERTION_FAILED) (version 23.10.3.5 (official build))",
        ),
        (
            CANNOT_PARSE,
            "2023.11.11 11:11:12.000000 [ 998 ] {p2} <Error> executeQuery: Code: 6. DB::Exception: Cannot parse string 'x1' as UInt64: syntax error at begin of string. Note: there are toUInt64OrZero and toUInt64OrNull functions, which returns zero/NULL instead of throwing exception. (CANNOT_PARSE_TEXT) (version 23.10.3.5 (official build))",
        ),
        (
            NETWORK_ERROR,
            "2023.12.01 01:02:03.040506 [ 5555 ] {r1} <Error> executeQuery: Code: 279. DB::NetException: All connection tries failed. Log: \n\nCode: 210. DB::NetException: Connection refused (ch-2:9000). (NETWORK_ERROR) (version 23.11.1.2711 (official build))",
        ),
        (
            NETWORK_ERROR,
            "2023.12.01 01:02:04.000000 [ 5556 ] {r2} <Error> executeQuery: Code: 209. DB::NetException: Timeout exceeded while reading from socket (10.0.0.3:9000, 300000 ms). (SOCKET_TIMEOUT) (version 23.11.1.2711 (official build))",
        ),
        (
            DISTRIBUTED_SEND_FAILED,
            "2023.12.01 01:02:05.000000 [ 700 ] {} <Error> default.events_dist.DirectoryMonitor.default: Code: 210. DB::NetException: Connection refused (ch-2:9000). (NETWORK_ERROR) (version 23.8.2.7 (official build))",
        ),
        (
            DISTRIBUTED_SEND_FAILED,
            "2024.03.01 01:02:05.000000 [ 701 ] {} <Error> default.events_dist.DistributedInsertQueue.shard2_replica1: Code: 279. DB::NetException: All connection tries failed. Log: Connection refused. (ALL_CONNECTION_TRIES_FAILED) (version 24.2.1.2248 (official build))",
        ),
        (
            AUTHENTICATION_FAILED,
            "2023.06.06 06:06:06.060606 [ 606 ] {} <Error> TCPHandler: Code: 516. DB::Exception: medic: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED) (version 23.5.3.24 (official build))",
        ),
        (
            SERVER_CRASH,
            "2023.09.09 09:09:09.090909 [ 31337 ] {} <Fatal> BaseDaemon: (version 23.8.2.7 (official build), build id: 7A2D4E1C0B9F8E7D, git hash: f73c8f378745d8520eec8e0f1d5b8a2b2ee1e4a9) (from thread 29812) (query_id: 1f2e3d4c) (query: SELECT ...) Received signal Segmentation fault (11)",
        ),
    ];

    #[test]
    fn real_failure_lines_get_their_signature() {
        for (want, line) in LINES {
            assert_eq!(sig(line), Some(*want), "{line}");
        }
    }

    #[test]
    fn every_signature_has_a_real_line() {
        for s in ALL {
            assert!(LINES.iter().any(|(want, _)| *want == s), "no test line for {s}");
        }
    }

    #[test]
    fn ordinary_lines_have_no_signature() {
        for line in [
            "2024.01.15 10:23:45.123456 [ 12345 ] {} <Information> Application: Ready for connections.",
            "2024.01.15 10:23:45.123456 [ 12345 ] {q} <Debug> executeQuery: (from 127.0.0.1:5000) SELECT 'Too many parts'",
            "2024.01.15 10:23:45.123456 [ 12345 ] {q} <Information> executeQuery: Read 1 rows, 1.00 B in 0.001 sec., 1000 rows/sec., 1.00 KiB/sec.",
            "2024.01.15 10:23:45.123456 [ 1 ] {} <Trace> default.events (ReplicatedMergeTreeQueue): Memory limit (total) exceeded",
            "2024.01.15 10:23:45.123456 [ 1 ] {} <Warning> Application: Listen [::]:9009 failed: Poco::Exception. Code: 1000, e.code() = 0, DNS error: EAI: Address family for hostname not supported",
            "2024.01.15 10:23:45.123456 [ 1 ] {} <Error> executeQuery: Code: 60. DB::Exception: Unknown table expression identifier 'nope' in scope SELECT * FROM nope. (UNKNOWN_TABLE)",
            "2024.01.15 10:23:45.123456 [ 1 ] {} <Fatal> BaseDaemon: ########################################",
        ] {
            assert_eq!(sig(line), None, "{line}");
        }
    }

    #[test]
    fn lines_in_other_formats_are_classified_by_text() {
        assert_eq!(
            classify(LogLevel::Unspecified, None, "", "write failed: No space left on device"),
            Some(NO_SPACE_LEFT)
        );
        assert_eq!(classify(LogLevel::Error, None, "", "all good"), None);
    }
}
