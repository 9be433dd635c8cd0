//! The checkpoint: how far the sink has confirmed, written atomically (tmp + rename).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::Position;

const CHECKPOINT: &str = "checkpoint";

pub(super) fn read_checkpoint(dir: &Path) -> io::Result<Option<Position>> {
    match fs::read_to_string(dir.join(CHECKPOINT)) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(seq)), Some(Ok(offset))) => Ok(Some(Position { seq, offset })),
                _ => {
                    tracing::warn!("spool checkpoint unreadable; replaying the whole spool");
                    Ok(None)
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Written to a temporary file and renamed, so a crash leaves the old or the new one.
pub(super) fn write_checkpoint(dir: &Path, at: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{} {}", at.seq, at.offset)?;
    f.sync_data()?;
    fs::rename(tmp, dir.join(CHECKPOINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None);
        write_checkpoint(dir.path(), Position { seq: 7, offset: 42 }).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(Position { seq: 7, offset: 42 }));
        std::fs::write(dir.path().join(CHECKPOINT), "garbage").unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), None, "unreadable: replay everything");
    }
}
