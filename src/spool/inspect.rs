//! `edge spool inspect` and `edge spool repair`: offline looks into a spool directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::checkpoint::{read_checkpoint, write_checkpoint};
use super::segment::{self, ScanStats};
use super::Position;

/// Summary of a spool directory for `edge spool inspect`.
#[derive(Debug, Default)]
pub struct Inspection {
    pub checkpoint: Option<Position>,
    pub segments: Vec<(u64, u64, ScanStats, u64)>, // seq, size, stats, unshipped records
}

pub fn inspect(dir: &Path) -> io::Result<Inspection> {
    let checkpoint = read_checkpoint(dir)?;
    let mut out = Inspection { checkpoint, ..Default::default() };
    for seq in segment::list_segments(dir)? {
        let path = segment::segment_path(dir, seq);
        let data = segment::read_all(&path)?;
        let shipped_to = match checkpoint {
            Some(c) if seq < c.seq => u64::MAX,
            Some(c) if seq == c.seq => c.offset,
            _ => 0,
        };
        let mut unshipped = 0;
        let (stats, _) = segment::scan(&data, 0, true, |after, r| {
            if after > shipped_to {
                unshipped += u64::from(r.rows);
            }
        });
        out.segments.push((seq, data.len() as u64, stats, unshipped));
    }
    Ok(out)
}

/// Rewrites damaged segments keeping only intact records; returns records kept per repaired segment.
pub fn repair(dir: &Path) -> io::Result<Vec<(u64, ScanStats)>> {
    let mut repaired = Vec::new();
    for seq in segment::list_segments(dir)? {
        let path = segment::segment_path(dir, seq);
        let data = segment::read_all(&path)?;
        let mut clean = Vec::with_capacity(data.len());
        let (stats, _) = segment::scan(&data, 0, true, |_, r| {
            segment::encode(&mut clean, r.format, r.written_ms, r.rows, &r.org, &r.payload);
        });
        if stats.damaged_regions == 0 {
            continue;
        }
        let tmp = path.with_extension("repair");
        let mut f = File::create(&tmp)?;
        f.write_all(&clean)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        repaired.push((seq, stats));
    }
    // Offsets inside repaired segments moved: replay them whole rather than trust the checkpoint.
    if !repaired.is_empty() {
        if let Some(c) = read_checkpoint(dir)? {
            if repaired.iter().any(|(seq, _)| *seq == c.seq) {
                write_checkpoint(dir, Position { seq: c.seq, offset: 0 })?;
            }
        }
    }
    Ok(repaired)
}
