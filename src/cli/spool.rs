//! `edge spool inspect` and `edge spool repair`: what the spool holds, printed for people.

use std::process::ExitCode;

use super::fail;

pub(super) fn inspect(dir: &std::path::Path) -> ExitCode {
    let report = match crate::spool::inspect(dir) {
        Ok(r) => r,
        Err(e) => return fail(&format!("spool {}: {e}", dir.display())),
    };
    match report.checkpoint {
        Some(c) => println!("checkpoint: segment {} offset {}", c.seq, c.offset),
        None => println!("checkpoint: none (everything present is unshipped)"),
    }
    println!(
        "{:>20} {:>12} {:>9} {:>10} {:>10} {:>8} {:>12}",
        "segment", "bytes", "records", "events", "unshipped", "damaged", "damaged_b"
    );
    let (mut unshipped, mut damaged) = (0, 0);
    for (seq, size, stats, pending) in &report.segments {
        println!(
            "{seq:>20} {size:>12} {:>9} {:>10} {pending:>10} {:>8} {:>12}",
            stats.records, stats.rows, stats.damaged_regions, stats.damaged_bytes
        );
        unshipped += pending;
        damaged += stats.damaged_regions;
    }
    println!("{} segments, {unshipped} unshipped events, {damaged} damaged regions", report.segments.len());
    if damaged > 0 {
        println!("damaged records are skipped when shipping; `edge spool repair` rewrites the segments without them");
    }
    ExitCode::SUCCESS
}

pub(super) fn repair(dir: &std::path::Path) -> ExitCode {
    match crate::spool::repair(dir) {
        Ok(repaired) if repaired.is_empty() => {
            println!("no damage found");
            ExitCode::SUCCESS
        }
        Ok(repaired) => {
            for (seq, stats) in &repaired {
                println!(
                    "segment {seq}: kept {} records ({} events), dropped {} damaged bytes in {} regions",
                    stats.records, stats.rows, stats.damaged_bytes, stats.damaged_regions
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("spool repair {}: {e}", dir.display())),
    }
}
