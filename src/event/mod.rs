//! Events: request body → validated, normalised rows, encoded once.
//!
//! [`parse`] splits a body into event values (one object, `{"events":[…]}`,
//! a bare array, or NDJSON) with simd-json; [`validate`] checks each event
//! against the SPEC's field rules and writes it straight into a
//! [`RowBlock`] in ClickHouse's RowBinary format ([`rowbinary`]), so no
//! per-event struct is allocated and nothing downstream re-encodes it.
//! [`direct`] is tried first: for the common body (no escape, every event
//! valid) it reads the fields where they lie and hands them to the same rules
//! and row writer, without a tape; it declines anything else.

pub mod direct;
mod fields;
mod json_text;
pub mod parse;
pub mod rowbinary;
pub mod validate;

use bytes::BytesMut;

use crate::tenant::OrgId;

/// RowBinary rows of one organisation, ready for an `INSERT … FORMAT RowBinary`.
#[derive(Debug)]
pub struct RowBlock {
    pub org: OrgId,
    pub rows: usize,
    pub data: BytesMut,
}

impl RowBlock {
    pub fn new(org: OrgId, capacity: usize) -> Self {
        RowBlock { org, rows: 0, data: BytesMut::with_capacity(capacity) }
    }
}

/// Why one event was refused; reported per event in a batch's 202 or 400.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

// Both built out of line: refusals are rare, and checks on the hot path stay small without
// their formatting inside.
impl Rejection {
    #[cold]
    #[inline(never)]
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection { code, message: message.into() }
    }

    /// A message formatted from values (`format_args!`): formatted only when refused.
    #[cold]
    #[inline(never)]
    pub fn formatted(code: &'static str, message: std::fmt::Arguments<'_>) -> Self {
        Rejection { code, message: message.to_string() }
    }
}

/// No event of a request was valid: each refusal by its index in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRejected(pub Vec<(usize, Rejection)>);

/// What the in-process aggregates and the quota cut need from an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSummary {
    /// Days since the unix epoch (UTC) of the event's timestamp.
    pub day: u32,
    pub revenue_cents: i64,
    pub device_hash: u64,
    /// Where the event's row ends in its block (a batch over the quota is cut there).
    pub row_end: usize,
}
