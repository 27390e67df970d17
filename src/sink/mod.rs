//! Rows → Parquet. The pipeline sends [`RowBatch`]es over a bounded channel
//! to one writer thread (polars has its own thread pool; it is never called
//! from our rayon workers), which appends them to one Parquet file per table
//! in row groups.

pub mod columns;
pub mod tables;
pub mod writer;

use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

pub use columns::Ts;
pub use tables::*;
use writer::DirSink;

/// Extra prose at the end of docs/SCHEMA.md.
pub const SCHEMA_APPENDIX: &str = include_str!("schema_appendix.md");

/// Batches in flight between the pipeline and the writer: enough to keep
/// both busy, few enough to bound memory (each batch is one input batch's rows).
const CHANNEL_DEPTH: usize = 4;

/// The writer thread and the channel to it.
pub struct SinkThread {
    tx: Option<SyncSender<RowBatch>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl SinkThread {
    /// Starts a writer of `DIR/<table>.parquet` for every table.
    pub fn to_dir(dir: &Path) -> Result<SinkThread, String> {
        let mut sink =
            DirSink::new(dir).map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
        let mut writers =
            TableWriters::open(&mut sink).map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        let (tx, rx) = sync_channel::<RowBatch>(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("swarmtap-sink".into())
            .spawn(move || -> Result<(), String> {
                for batch in rx {
                    writers
                        .push(&mut sink, batch)
                        .map_err(|e| format!("writing Parquet: {e}"))?;
                }
                writers.finish(&mut sink).map_err(|e| format!("finishing Parquet: {e}"))
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(SinkThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Sends rows; an error means the writer thread failed (see `finish`).
    pub fn send(&self, batch: RowBatch) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        match &self.tx {
            Some(tx) => tx.send(batch).map_err(|_| "the Parquet writer stopped".to_string()),
            None => Err("the Parquet writer is closed".into()),
        }
    }

    /// Closes the channel and waits for every file to be complete.
    pub fn finish(mut self) -> Result<(), String> {
        self.tx.take();
        match self.handle.take() {
            Some(h) => h.join().map_err(|_| "the Parquet writer panicked".to_string())?,
            None => Ok(()),
        }
    }
}
