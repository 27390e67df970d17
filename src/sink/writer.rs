//! Parquet writing: one file per table, written in row groups as rows
//! arrive, so memory holds at most one row group per table.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::tables::Row;

/// Where tables go. Implemented by [`DirSink`] (one Parquet file per table);
/// live capture adds a rotating sink.
pub trait TableSink {
    type For<R: Row>;
    fn open<R: Row>(&mut self) -> PolarsResult<Self::For<R>>;
    fn push<R: Row>(&mut self, t: &mut Self::For<R>, rows: Vec<R>) -> PolarsResult<()>;
    fn finish<R: Row>(&mut self, t: Self::For<R>) -> PolarsResult<()>;
    /// Bytes of rows buffered for the next row group (an estimate).
    fn buffered_bytes<R: Row>(&self, _t: &Self::For<R>) -> usize {
        0
    }
    /// Writes the buffered rows out now, as a (smaller) row group.
    fn flush<R: Row>(&mut self, _t: &mut Self::For<R>) -> PolarsResult<()> {
        Ok(())
    }
}

/// Estimated memory of `n` buffered rows: the struct plus a typical heap
/// share for its strings and lists.
pub fn row_bytes<R: Row>(n: usize) -> usize {
    n * (std::mem::size_of::<R>() + 32)
}

/// One table's Parquet file being written.
pub struct TableFile<R: Row> {
    writer: polars::io::parquet::write::BatchedWriter<File>,
    buf: Vec<R>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    _row: PhantomData<R>,
}

/// Writes `DIR/<table>.parquet`. Files are written as `.<table>.parquet.tmp`
/// and renamed when complete, so a reader never sees a partial file.
pub struct DirSink {
    dir: PathBuf,
    /// Rows per row group: large enough for good compression and fast scans,
    /// small enough that buffering one group per table stays a few MB.
    pub row_group_rows: usize,
}

impl DirSink {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DirSink {
            dir: dir.to_path_buf(),
            row_group_rows: 64 * 1024,
        })
    }
}

fn write_group<R: Row>(t: &mut TableFile<R>) -> PolarsResult<()> {
    if t.buf.is_empty() {
        return Ok(());
    }
    let df = R::to_frame(&t.buf)?;
    t.writer.write_batch(&df)?;
    t.buf.clear();
    Ok(())
}

impl TableSink for DirSink {
    type For<R: Row> = TableFile<R>;

    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>> {
        let final_path = self.dir.join(format!("{}.parquet", R::TABLE));
        let tmp_path = self.dir.join(format!(".{}.parquet.tmp", R::TABLE));
        let f = File::create(&tmp_path)?;
        let writer = ParquetWriter::new(f)
            .with_compression(ParquetCompression::Zstd(None))
            .set_parallel(false)
            .batched(&R::schema())?;
        Ok(TableFile {
            writer,
            buf: Vec::new(),
            tmp_path,
            final_path,
            _row: PhantomData,
        })
    }

    fn push<R: Row>(&mut self, t: &mut TableFile<R>, mut rows: Vec<R>) -> PolarsResult<()> {
        if t.buf.is_empty() && rows.len() >= self.row_group_rows {
            // Large batches go straight out.
            t.buf = std::mem::take(&mut rows);
            return write_group(t);
        }
        t.buf.append(&mut rows);
        if t.buf.len() >= self.row_group_rows {
            write_group(t)?;
        }
        Ok(())
    }

    fn buffered_bytes<R: Row>(&self, t: &TableFile<R>) -> usize {
        row_bytes::<R>(t.buf.len())
    }

    fn flush<R: Row>(&mut self, t: &mut TableFile<R>) -> PolarsResult<()> {
        write_group(t)
    }

    fn finish<R: Row>(&mut self, mut t: TableFile<R>) -> PolarsResult<()> {
        write_group(&mut t)?;
        t.writer.finish()?;
        drop(t.writer);
        std::fs::rename(&t.tmp_path, &t.final_path)?;
        Ok(())
    }
}
