//! Parquet writing: one file per table, written in row groups as rows
//! arrive, so memory holds at most one row group per table. [`DirSink`]
//! writes `DIR/<table>.parquet` (analyze); [`RotatingSink`] writes one file
//! per table and interval into hive partitions (live).

use std::fs::File;
use std::io::BufWriter;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::tables::Row;

/// Where tables go. Implemented by [`DirSink`] (one Parquet file per table)
/// and [`RotatingSink`] (one file per table and live interval).
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

/// Bytes buffered in front of each Parquet file. polars issues one `write`
/// per page header, page and footer field (about 500 for an empty table), so
/// unbuffered files cost thousands of system calls per run. The footer write
/// flushes the buffer and reports its errors.
const WRITE_BUFFER: usize = 256 * 1024;

/// One table's Parquet file being written.
pub struct TableFile<R: Row> {
    writer: polars::io::parquet::write::BatchedWriter<BufWriter<File>>,
    buf: Vec<R>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// A constant timestamp column added to every row (live: the
    /// interval's start), when the table does not declare it itself.
    extra_ts: Option<(&'static str, i64)>,
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

/// Buffers rows and writes a row group each time `group_rows` are held
/// (a batch that large on its own goes straight out).
fn push_rows<R: Row>(t: &mut TableFile<R>, mut rows: Vec<R>, group_rows: usize) -> PolarsResult<()> {
    if t.buf.is_empty() && rows.len() >= group_rows {
        t.buf = std::mem::take(&mut rows);
        return write_group(t);
    }
    t.buf.append(&mut rows);
    if t.buf.len() >= group_rows {
        write_group(t)?;
    }
    Ok(())
}

fn write_group<R: Row>(t: &mut TableFile<R>) -> PolarsResult<()> {
    if t.buf.is_empty() {
        return Ok(());
    }
    let mut df = R::to_frame(&t.buf)?;
    if let Some((name, v)) = t.extra_ts {
        let c = Int64Chunked::full(name.into(), v, df.height())
            .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
            .into_column();
        df.with_column(c)?;
    }
    t.writer.write_batch(&df)?;
    t.buf.clear();
    Ok(())
}

impl<R: Row> TableFile<R> {
    /// Starts `tmp_path` (renamed to `final_path` when finished) with
    /// `schema`; `extra_ts` is a constant column the rows do not carry.
    fn create(
        tmp_path: PathBuf,
        final_path: PathBuf,
        schema: &Schema,
        extra_ts: Option<(&'static str, i64)>,
    ) -> PolarsResult<Self> {
        let f = BufWriter::with_capacity(WRITE_BUFFER, File::create(&tmp_path)?);
        let writer = ParquetWriter::new(f)
            .with_compression(ParquetCompression::Zstd(None))
            .set_parallel(false)
            .batched(schema)?;
        Ok(TableFile {
            writer,
            buf: Vec::new(),
            tmp_path,
            final_path,
            extra_ts,
            _row: PhantomData,
        })
    }

    /// Writes the rows still buffered and the footer (which flushes the
    /// file buffer): the file is complete under its temporary name.
    fn close(mut self) -> PolarsResult<(PathBuf, PathBuf)> {
        write_group(&mut self)?;
        self.writer.finish()?;
        Ok((self.tmp_path, self.final_path))
    }
}

impl TableSink for DirSink {
    type For<R: Row> = TableFile<R>;

    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>> {
        let final_path = self.dir.join(format!("{}.parquet", R::TABLE));
        let tmp_path = self.dir.join(format!(".{}.parquet.tmp", R::TABLE));
        TableFile::create(tmp_path, final_path, &R::schema(), None)
    }

    fn push<R: Row>(&mut self, t: &mut TableFile<R>, rows: Vec<R>) -> PolarsResult<()> {
        push_rows(t, rows, self.row_group_rows)
    }

    fn buffered_bytes<R: Row>(&self, t: &TableFile<R>) -> usize {
        row_bytes::<R>(t.buf.len())
    }

    fn flush<R: Row>(&mut self, t: &mut TableFile<R>) -> PolarsResult<()> {
        write_group(t)
    }

    fn finish<R: Row>(&mut self, t: TableFile<R>) -> PolarsResult<()> {
        let (tmp, last) = t.close()?;
        std::fs::rename(tmp, last)?;
        Ok(())
    }
}

/// The column every live file carries: the start of the interval it was
/// written in (consumers of snapshot tables keep the latest row per key).
pub const INTERVAL_COLUMN: &str = "interval_start";

/// One live interval: its start (wall clock, µs since the epoch, UTC) and
/// its number in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start_us: i64,
    pub seq: u64,
}

/// Civil date (year, month, day) of a day count since 1970-01-01, in the
/// proleptic Gregorian calendar: days are grouped into 400-year eras of
/// 146,097 days, and years are counted from March so that the leap day
/// ends the year.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (date `YYYY-MM-DD`, hour `HH`, compact stamp `YYYYMMDDTHHMMSSZ`) of a
/// time in µs since the epoch, UTC.
pub fn utc_parts(us: i64) -> (String, String, String) {
    let secs = us.div_euclid(1_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, se) = (sod / 3600, sod % 3600 / 60, sod % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}"),
        format!("{h:02}"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{se:02}Z"),
    )
}

/// Writes `DIR/<table>/date=YYYY-MM-DD/hour=HH/part-<start>-<seq>.parquet`
/// for the current [`Interval`], every file with an `interval_start`
/// column. Each file is written as a dot-file (`.part-….parquet.tmp`, which
/// no `*.parquet` glob and no hive reader picks up), synced to disk, then
/// renamed: a reader sees whole files only, and a crash or power loss loses
/// at most the interval being written.
pub struct RotatingSink {
    dir: PathBuf,
    interval: Interval,
    pub row_group_rows: usize,
}

impl RotatingSink {
    pub fn new(dir: &Path, first: Interval) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(RotatingSink {
            dir: dir.to_path_buf(),
            interval: first,
            row_group_rows: 64 * 1024,
        })
    }

    /// Files opened from now on belong to `next`.
    pub fn set_interval(&mut self, next: Interval) {
        self.interval = next;
    }
}

impl TableSink for RotatingSink {
    type For<R: Row> = TableFile<R>;

    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>> {
        let (date, hour, stamp) = utc_parts(self.interval.start_us);
        let part = self
            .dir
            .join(R::TABLE)
            .join(format!("date={date}"))
            .join(format!("hour={hour}"));
        std::fs::create_dir_all(&part)?;
        let name = format!("part-{stamp}-{:06}", self.interval.seq);
        let final_path = part.join(format!("{name}.parquet"));
        let tmp_path = part.join(format!(".{name}.parquet.tmp"));
        let mut schema = R::schema();
        let extra_ts = if schema.contains(INTERVAL_COLUMN) {
            None
        } else {
            schema.insert_at_index(
                schema.len(),
                INTERVAL_COLUMN.into(),
                DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)),
            )?;
            Some((INTERVAL_COLUMN, self.interval.start_us))
        };
        TableFile::create(tmp_path, final_path, &schema, extra_ts)
    }

    fn push<R: Row>(&mut self, t: &mut TableFile<R>, rows: Vec<R>) -> PolarsResult<()> {
        push_rows(t, rows, self.row_group_rows)
    }

    fn buffered_bytes<R: Row>(&self, t: &TableFile<R>) -> usize {
        row_bytes::<R>(t.buf.len())
    }

    fn flush<R: Row>(&mut self, t: &mut TableFile<R>) -> PolarsResult<()> {
        write_group(t)
    }

    fn finish<R: Row>(&mut self, t: TableFile<R>) -> PolarsResult<()> {
        let (tmp, last) = t.close()?;
        // The data must be on disk before the name says the file is whole.
        File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &last)?;
        if let Some(parent) = last.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // 2026-11-21
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        let (d, h, s) = utc_parts(1_763_718_245_123_456);
        assert_eq!(
            (d.as_str(), h.as_str(), s.as_str()),
            ("2025-11-21", "09", "20251121T094405Z")
        );
    }
}
