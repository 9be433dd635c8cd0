//! The ClickHouse sink: one `INSERT INTO events (…) FORMAT Native` per block.
//!
//! Rows arrive already encoded as RowBinary; [`ClickHouseSink::encode`] sorts
//! and transposes them into one columnar Native block ([`super::native`],
//! cheaper for ClickHouse to parse, and already in key order), ahead of the
//! send; the send LZ4-frames it to a remote server (the crate's `decompress=1`
//! path, which 18.16 understands; not to a loopback URL unless
//! `EDGE_CLICKHOUSE_COMPRESSION=lz4`, see [`ClickHouseConfig::compress`]) and POSTs it. The crate's
//! schema validation is off: it needs `RowBinaryWithNamesAndTypes`, which
//! Debian's 18.16 lacks, and no setting is sent that an old server would
//! refuse (an unknown setting is a hard error there).
//!
//! Whether a failure is worth retrying is decided by [`retryable`], a table of
//! ClickHouse error codes with the reason for each.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clickhouse::{Client, Compression};

use super::native::NativeEncoder;
use super::{Block, SinkError};
use crate::buffers::BufferPool;
use crate::config::ClickHouseConfig;
use crate::event::rowbinary::RowFormat;
use crate::metrics as m;

/// The crate's LZ4 frames are built per `send`; 1 MiB pieces keep memory flat for big blocks.
const SEND_PIECE: usize = 1 << 20;
/// A block of 100k rows inserts in well under a second here; 60 s means something is stuck.
const INSERT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ClickHouseSink {
    insert_client: Client,
    query_client: Client,
    /// The `INSERT` of each row format (V1, V2): a block from an older spool keeps its columns.
    sql: [String; 2],
    data_dir: PathBuf,
    /// The last insert failed for a column the table lacks: `edge migrate` has not run for
    /// this build. Blocks are held (retried) and `/readyz` says so.
    schema_behind: std::sync::atomic::AtomicBool,
    /// Sorting and transposing memory, and encoded blocks' buffers, reused block after block.
    encoder: std::sync::Mutex<NativeEncoder>,
    buffers: BufferPool,
}

/// Encoded blocks kept for reuse: one is in flight while the next is encoded.
const ENCODED_BUFFERS: usize = 2;
const MAX_KEPT_BUFFER: usize = 128 << 20;

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig, data_dir: PathBuf) -> Self {
        let base = client(config);
        ClickHouseSink {
            insert_client: base.clone().with_compression(if config.compress {
                Compression::Lz4
            } else {
                Compression::None
            }),
            // 18.16 answers compressed responses wrongly: queries go uncompressed.
            query_client: base.with_compression(Compression::None),
            sql: [RowFormat::V1, RowFormat::V2].map(|f| format!("INSERT INTO events ({}) FORMAT Native", f.columns())),
            data_dir,
            schema_behind: Default::default(),
            encoder: Default::default(),
            buffers: BufferPool::new(ENCODED_BUFFERS, MAX_KEPT_BUFFER),
        }
    }

    pub async fn send(&self, block: &Block) -> Result<(), SinkError> {
        let started = Instant::now();
        let result = self.insert(block).await;
        metrics::histogram!(m::CH_INSERT_DURATION).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics::counter!(m::CH_INSERT_ROWS).increment(block.rows as u64);
                self.schema_behind.store(false, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            Err(InsertError::Malformed(e)) => {
                metrics::counter!(m::CH_INSERT_ERRORS).increment(1);
                Err(e)
            }
            Err(InsertError::ClickHouse(e)) => {
                metrics::counter!(m::CH_INSERT_ERRORS).increment(1);
                let message = e.to_string();
                if error_code(&message) == Some(16) {
                    // NO_SUCH_COLUMN_IN_TABLE: newer rows than the table; retried until migrated.
                    self.schema_behind.store(true, std::sync::atomic::Ordering::Release);
                }
                Err(SinkError { retryable: retryable(&message), message })
            }
        }
    }

    async fn insert(&self, block: &Block) -> Result<(), InsertError> {
        let data = match &block.encoded {
            Some(data) => data.clone(),
            None => self.encode(block).map_err(InsertError::Malformed)?,
        };
        let sql = match block.format {
            RowFormat::V1 => &self.sql[0],
            RowFormat::V2 => &self.sql[1],
        };
        let mut insert = self
            .insert_client
            .insert_formatted_with(sql.clone())
            .with_timeouts(Some(INSERT_TIMEOUT), Some(INSERT_TIMEOUT));
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + SEND_PIECE).min(data.len());
            insert.send(data.slice(offset..end)).await.map_err(InsertError::ClickHouse)?;
            offset = end;
        }
        insert.end().await.map_err(InsertError::ClickHouse)
    }

    /// The block as one sorted `Native` block (see [`super::native`]).
    pub fn encode(&self, block: &Block) -> Result<bytes::Bytes, SinkError> {
        let chunks: Vec<&[u8]> = block.chunks.iter().map(|c| &c[..]).collect();
        let mut encoder = self.encoder.lock().expect("encoder lock");
        match encoder.encode(&chunks, block.rows, block.format, |size| self.buffers.take(size)) {
            Ok(native) => Ok(bytes::Bytes::from(native)),
            Err(_) => Err(SinkError { retryable: false, message: "block is not valid RowBinary for events".into() }),
        }
    }

    /// A block is done with: its encoded buffer is kept for the next.
    pub fn recycle(&self, block: Block) {
        if let Some(encoded) = block.encoded {
            self.buffers.give(encoded);
        }
    }

    /// Reachable, and not refusing rows for columns it lacks.
    pub async fn ping(&self) -> bool {
        !self.schema_behind.load(std::sync::atomic::Ordering::Acquire)
            && matches!(
                tokio::time::timeout(Duration::from_secs(2), self.query_client.query("SELECT 1").execute()).await,
                Ok(Ok(()))
            )
    }

    pub fn dead_letter_dir(&self) -> PathBuf {
        super::dead_letter_dir(&self.data_dir)
    }
}

enum InsertError {
    /// Our own encoding is broken: no retry can help.
    Malformed(SinkError),
    ClickHouse(clickhouse::error::Error),
}

/// A client for `config` with schema validation off (see the module docs).
pub fn client(config: &ClickHouseConfig) -> Client {
    let mut c = Client::default().with_url(&config.url).with_database(&config.database).with_validation(false);
    if let Some(user) = &config.user {
        c = c.with_user(user);
    }
    if let Some(password) = &config.password {
        c = c.with_password(password);
    }
    c
}

/// The server's error code from a message like `Code: 60, e.displayText() = DB::Exception: …`.
fn error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Should the same block be sent again? Only "no" when the block itself is the problem:
/// everything else (load, network, schema or credentials an operator can fix) is retried,
/// because dropping accepted events is worse than waiting.
pub fn retryable(message: &str) -> bool {
    match error_code(message) {
        // No code: network errors, timeouts, a restarting server.
        None => true,
        // The data cannot be parsed as the table's columns: sending it again cannot help.
        Some(
            6   // CANNOT_PARSE_TEXT
            | 26  // CANNOT_PARSE_QUOTED_STRING
            | 27  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
            | 33  // CANNOT_READ_ALL_DATA: a truncated row
            | 53  // TYPE_MISMATCH
            | 69  // ARGUMENT_OUT_OF_BOUND
            | 70  // CANNOT_CONVERT_TYPE
            | 72  // CANNOT_PARSE_NUMBER
            | 117 // INCORRECT_DATA
            | 130 // CANNOT_READ_ARRAY_FROM_TEXT
            | 271 // CANNOT_DECOMPRESS: our framing is corrupt
        ) => false,
        // Load: TOO_MANY_PARTS (252), MEMORY_LIMIT_EXCEEDED (241), TOO_MANY_SIMULTANEOUS_QUERIES (202),
        // TIMEOUT_EXCEEDED (159), SOCKET_TIMEOUT (209), NETWORK_ERROR (210): back off and retry.
        // Schema and access: UNKNOWN_TABLE (60), UNKNOWN_DATABASE (81), NO_SUCH_COLUMN_IN_TABLE (16),
        // READONLY (164), REQUIRED_PASSWORD (194), UNKNOWN_USER (192), WRONG_PASSWORD (193),
        // AUTHENTICATION_FAILED (516): fixed by `edge migrate` or the operator; retry meanwhile.
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_messages() {
        assert_eq!(
            error_code("bad response: Code: 60, e.displayText() = DB::Exception: Table default.events doesn't exist"),
            Some(60)
        );
        assert_eq!(error_code("Code: 252. DB::Exception: Too many parts"), Some(252));
        assert_eq!(error_code("network error: connection refused"), None);
    }

    #[test]
    fn retry_table() {
        // One case per reason in the table.
        assert!(retryable("network error: connection refused"));
        assert!(retryable("timeout expired"));
        assert!(retryable("Code: 252, e.displayText() = DB::Exception: Too many parts (300)"));
        assert!(retryable("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded"));
        assert!(retryable("Code: 202, e.displayText() = DB::Exception: Too many simultaneous queries"));
        assert!(retryable("Code: 60, e.displayText() = DB::Exception: Table default.events doesn't exist"));
        assert!(retryable("Code: 81, e.displayText() = DB::Exception: Database edge doesn't exist"));
        assert!(retryable("Code: 516, e.displayText() = DB::Exception: default: Authentication failed"));
        assert!(retryable("Code: 193, e.displayText() = DB::Exception: Wrong password for user default"));
        assert!(!retryable("Code: 33, e.displayText() = DB::Exception: Cannot read all data"));
        assert!(!retryable("Code: 27, e.displayText() = DB::Exception: Cannot parse input"));
        assert!(!retryable("Code: 53, e.displayText() = DB::Exception: Type mismatch"));
        assert!(!retryable("Code: 271, e.displayText() = DB::Exception: Cannot decompress"));
    }
}
