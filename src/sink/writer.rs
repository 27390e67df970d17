//! Parquet writing: one file per table, written in row groups as rows
//! arrive. Rows go into their table's column builders as soon as they reach
//! the writer, so memory holds at most one row group's columns per table
//! (and less: see `TableWriters::enforce_budget`). [`DirSink`]
//! writes `DIR/<table>.parquet` (analyze); [`RotatingSink`] writes one file
//! per table and interval into hive partitions (live); [`DiscardSink`]
//! encodes every table as `DirSink` does and keeps no byte of it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use polars::prelude::*;
use polars_parquet::parquet::compression::Compression;
use polars_parquet::parquet::page::{CompressedDataPage, CompressedDictPage, CompressedPage, DataPageHeader, Page};
use polars_parquet::parquet::CowBuffer;
use polars_parquet::write::{
    array_to_columns, array_to_pages, get_dtype_encoding, to_nested, to_parquet_schema, CompressionOptions, DynIter,
    DynStreamingIterator, Encoding, FallibleStreamingIterator, FileWriter, ParquetType, StatisticsOptions, Version,
    WriteOptions,
};

use polars_arrow::array::{Array, DictionaryArray, PrimitiveArray, Utf8Array};
use polars_arrow::datatypes::{IntegerType, PhysicalType};

use super::columns::{names_as_text, set_current_table, writes_as};
use super::layout::{self, Layout, Staging};
use super::pages;
use super::tables::Row;

/// Where tables go: [`DirSink`] (one Parquet file per table),
/// [`RotatingSink`] (one file per table and live interval) and
/// [`DiscardSink`] (encoded, then dropped). They differ only in where a
/// [`TableFile`] writes and what closing it means; rows reach the file's
/// column builders and row groups the same way for all three.
pub trait TableSink {
    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>>;
    fn finish<R: Row>(&mut self, t: TableFile<R>) -> PolarsResult<()>;
    /// Rows a row group holds at most.
    fn row_group_rows(&self) -> usize;

    fn push<'a, R: Row>(&mut self, t: &mut TableFile<R>, rows: impl Iterator<Item = &'a R>) -> PolarsResult<()> {
        push_rows(t, rows, self.row_group_rows())
    }
    /// Bytes buffered for the next row group (the column builders' heap).
    fn buffered_bytes<R: Row>(&self, t: &TableFile<R>) -> usize {
        R::builder_bytes(&t.builders)
    }
    /// Writes the buffered rows out now, as a (smaller) row group.
    fn flush<R: Row>(&mut self, t: &mut TableFile<R>) -> PolarsResult<()> {
        write_group(t)
    }
}

/// Bytes buffered in front of each Parquet file. The Parquet writer issues
/// one `write` per page header, page and footer field (about 500 for an
/// empty table), so unbuffered files cost thousands of system calls per
/// run. The footer write flushes the buffer and reports its errors.
const WRITE_BUFFER: usize = 256 * 1024;

/// The host's name, the default `--sensor` (no libc: read from /proc, else
/// /etc/hostname, else $HOSTNAME, else `unknown`).
pub fn host_name() -> String {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    read("/proc/sys/kernel/hostname")
        .or_else(|| read("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The Arrow schema written for `schema` (the table's columns plus the
/// writer's constant ones): plain `large_string` (no string views, which
/// pandas 3 cannot convert), `list`, UTC microsecond timestamps, and a
/// column nullable only where its declaration says so (`?`).
fn arrow_schema<R: Row>(schema: &Schema) -> ArrowSchema {
    ArrowSchema::from_iter(arrow_fields::<R>(schema))
}

/// The fields of [`arrow_schema`], in order.
pub fn arrow_fields<R: Row>(schema: &Schema) -> Vec<ArrowField> {
    let docs = R::columns();
    let arrow = schema.to_arrow(CompatLevel::oldest());
    arrow
        .iter_values()
        .map(|f| {
            let nullable = docs
                .iter()
                .find(|d| d.name == f.name.as_str())
                .is_some_and(|d| d.type_doc.ends_with('?'));
            // Lists with 32-bit offsets (Arrow `list`, not `large_list`):
            // pandas 2's pyarrow backend explodes only those.
            let dtype = match &f.dtype {
                ArrowDataType::LargeList(inner) => ArrowDataType::List(inner.clone()),
                d => d.clone(),
            };
            ArrowField::new(f.name.clone(), dtype, nullable)
        })
        .collect()
}

/// Where a table file's bytes go: its file, or nowhere ([`DiscardSink`],
/// which counts them).
enum Dest {
    File(File),
    Discard(Arc<AtomicU64>),
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Dest::File(f) => f.write(buf),
            Dest::Discard(n) => {
                n.fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Dest::File(f) => f.flush(),
            Dest::Discard(_) => Ok(()),
        }
    }
}

/// One table's Parquet file being written.
pub struct TableFile<R: Row> {
    writer: FileWriter<BufWriter<Dest>>,
    fields: Vec<ParquetType>,
    encodings: Vec<Vec<Encoding>>,
    options: WriteOptions,
    /// The file's Arrow fields: the row's columns, `sensor`, then
    /// `extra_ts` when there is one.
    arrow_fields: Vec<ArrowField>,
    /// The rows of the next row group, as columns.
    builders: R::Builders,
    tmp_path: PathBuf,
    final_path: PathBuf,
    /// A constant timestamp column added to every row (live: the
    /// interval's start), when the table does not declare it itself.
    extra_ts: Option<(&'static str, i64)>,
    sensor: Arc<str>,
}

/// Writes `DIR/<table>.parquet`. The files are written into a new folder
/// beside DIR ([`Staging`]), which replaces DIR only when the run succeeded
/// ([`DirSink::commit`]): a failed run leaves a prior dataset as it was.
pub struct DirSink {
    staging: Staging,
    sensor: Arc<str>,
    /// Rows per row group: large enough for good compression and fast scans,
    /// small enough that buffering one group per table stays a few MB.
    pub row_group_rows: usize,
}

impl DirSink {
    /// A sink for `dir`: refused when `dir` holds anything but an `analyze`
    /// dataset, unless `force`.
    pub fn new(dir: &Path, sensor: &str, force: bool) -> std::io::Result<Self> {
        layout::check_target(dir, Layout::Single, force)?;
        Ok(DirSink {
            staging: Staging::new(dir)?,
            sensor: sensor.into(),
            row_group_rows: 64 * 1024,
        })
    }

    /// Puts the completed dataset in place of the target folder.
    pub fn commit(self) -> std::io::Result<()> {
        self.staging.commit()
    }

    /// The folder the files are written to until [`DirSink::commit`].
    pub fn staging_dir(&self) -> &Path {
        self.staging.path()
    }
}

/// Pushes rows into the table's builders and writes a row group each time
/// `group_rows` are held. The rows are read in place (the caller drops
/// them with their batch: moving each out first copied it, ~650 bytes a
/// DHT message row).
fn push_rows<'a, R: Row>(
    t: &mut TableFile<R>,
    rows: impl Iterator<Item = &'a R>,
    group_rows: usize,
) -> PolarsResult<()> {
    for r in rows {
        R::push_row(&mut t.builders, r);
        if R::builder_rows(&t.builders) >= group_rows {
            write_group(t)?;
        }
    }
    Ok(())
}

/// Writes the rows held in the builders as one row group: the builders'
/// buffers become the arrays, no second pass over rows.
fn write_group<R: Row>(t: &mut TableFile<R>) -> PolarsResult<()> {
    let h = R::builder_rows(&t.builders);
    if h == 0 {
        return Ok(());
    }
    set_current_table(R::TABLE);
    let mut arrays = R::finish_arrays(&mut t.builders, &t.arrow_fields)?;
    // One value: written as the dictionary the Parquet writer would make.
    let values = Utf8Array::<i64>::from_slice([&*t.sensor]).boxed();
    let keys = PrimitiveArray::<u32>::from_vec(vec![0; h]);
    let dict = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(values.dtype().clone()), false);
    arrays.push(DictionaryArray::<u32>::try_new(dict, keys, values)?.boxed());
    if let Some((name, v)) = t.extra_ts {
        let dtype = t
            .arrow_fields
            .iter()
            .find(|f| f.name.as_str() == name)
            .map(|f| f.dtype.clone())
            .ok_or_else(|| PolarsError::ComputeError(format!("no field {name}").into()))?;
        arrays.push(PrimitiveArray::<i64>::from_vec(vec![v; h]).to(dtype).boxed());
    }
    write_arrays(t, h, arrays, true)
}

/// Writes `df` (every column of the file, in its order) as row groups.
fn write_df<R: Row>(t: &mut TableFile<R>, df: &mut DataFrame) -> PolarsResult<()> {
    df.rechunk_mut();
    for batch in df.iter_chunks(CompatLevel::oldest(), false) {
        let n = batch.height();
        write_arrays(t, n, batch.into_arrays(), false)?;
    }
    Ok(())
}

/// Writes one row group of `n` rows: one array per field of the file, in
/// its order (cast to the field's type where it differs). `built`: the
/// arrays come from the column builders, whose text columns chose between
/// a dictionary and plain text themselves (`dict.rs`): a text array that
/// is not a dictionary is written plain, without polars-parquet's
/// cardinality estimate and dictionary cast; so are floats (see below),
/// and integer columns of nulls only are handed over as the dictionary
/// polars-parquet would make of them ([`null_dictionary`]).
fn write_arrays<R: Row>(t: &mut TableFile<R>, n: usize, arrays: Vec<Box<dyn Array>>, built: bool) -> PolarsResult<()> {
    // A zstd context for this row group only: its workspace (up to about
    // 1 MB, sized by the largest page) is freed with the group instead of
    // living as long as the file (one per table that flushed a group).
    let ctx = Mutex::new(Zstd {
        c: zstd::bulk::Compressor::new(ZSTD_LEVEL)?,
        mode: Mode::Default,
    });
    let mut columns = Vec::with_capacity(t.fields.len());
    for (((array, type_), enc), f) in arrays
        .into_iter()
        .zip(&t.fields)
        .zip(&t.encodings)
        .zip(t.writer.schema().iter_values())
    {
        let array = if writes_as(&*array, &f.dtype) {
            array
        } else if let ArrowDataType::Dictionary(..) = array.dtype() {
            // polars cannot cast a dictionary: its text first.
            polars::polars_compute::cast::cast(&*names_as_text(&*array)?, &f.dtype, Default::default())?
        } else {
            polars::polars_compute::cast::cast(&*array, &f.dtype, Default::default())?
        };
        let array = if built && is_null_numbers(&*array) {
            null_dictionary(&*array)?
        } else {
            array
        };
        // Floats: polars-parquet estimates their cardinality, then fails to
        // cast them to a dictionary (it has no float dictionaries) and
        // writes them plain; plain at once.
        let enc = if built && matches!(array.dtype(), ArrowDataType::LargeUtf8 | ArrowDataType::Float64) {
            &[Encoding::Plain]
        } else {
            enc.as_slice()
        };
        // A text column the builders made plain has more than 3/4 distinct
        // values in its row group (hashes, ids): see `Mode::Literals`.
        let text = built && matches!(array.dtype(), ArrowDataType::LargeUtf8);
        for (pages, bytes) in column_pages(array, type_, t.options, enc, built)? {
            let mode = match bytes {
                Some(n) if n <= STORED_BYTES => Mode::Stored,
                _ if text => Mode::Literals,
                _ => Mode::Default,
            };
            columns.push(Ok(DynStreamingIterator::new(Compressed {
                pages,
                zstd: &ctx,
                mode,
                current: None,
            })));
        }
    }
    t.writer.write(n as u64, DynIter::new(columns.into_iter()))?;
    Ok(())
}

/// Whether `array` is integers (or times) and all null.
fn is_null_numbers(array: &dyn Array) -> bool {
    use polars_arrow::types::PrimitiveType as P;
    !array.is_empty()
        && array.null_count() == array.len()
        && matches!(
            array.dtype().to_physical_type(),
            PhysicalType::Primitive(
                P::Int8 | P::Int16 | P::Int32 | P::Int64 | P::UInt8 | P::UInt16 | P::UInt32 | P::UInt64
            )
        )
}

/// A column of nulls only (a DHT message's optional numbers mostly are),
/// as the empty dictionary polars-parquet makes of it: its cardinality
/// estimate says one value, and its cast to a dictionary pushes every
/// null; made here at once. The array's own validity (all unset) is kept.
fn null_dictionary(array: &dyn Array) -> PolarsResult<Box<dyn Array>> {
    let keys = PrimitiveArray::<u32>::try_new(
        ArrowDataType::UInt32,
        vec![0u32; array.len()].into(),
        array.validity().cloned(),
    )?;
    let values = polars_arrow::array::new_empty_array(array.dtype().clone());
    let dict = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(array.dtype().clone()), false);
    Ok(DictionaryArray::<u32>::try_new(dict, keys, values)?.boxed())
}

/// The pages of one column chunk. A flat column (every column the tables
/// declare but lists) is one leaf: its pages are made here as
/// `array_to_columns` makes them, without its leaf expansion, which turns
/// the validity of a column with no value in the row group into
/// `Bitmap::new_zeroed` and so touches polars' 8 MiB shared zero buffer
/// (allocated and filled on first use, never freed: 8 MiB of resident
/// memory for every run with a null-only column chunk). The leaf keeps its
/// own validity bitmap, equal bit for bit, so the pages are the same bytes.
///
/// `built`: the array comes from the column builders, and its pages are
/// made by [`pages::fast_pages`] where it can (the same bytes).
///
/// Each column chunk's pages come with their bytes before compression
/// when they were made here (None for polars-parquet's, made one at a time
/// as they are written).
fn column_pages(
    array: Box<dyn Array>,
    type_: &ParquetType,
    options: WriteOptions,
    enc: &[Encoding],
    built: bool,
) -> PolarsResult<Vec<ChunkPages>> {
    let unknown = |v: Vec<DynIter<'static, PolarsResult<Page>>>| v.into_iter().map(|p| (p, None)).collect();
    if built {
        if let Some(page) = pages::list_page(&*array, type_, options) {
            let n = page_bytes(&page);
            return Ok(vec![(DynIter::new(std::iter::once(Ok(page))), Some(n))]);
        }
    }
    let (ParquetType::PrimitiveType(leaf_type), [encoding]) = (type_, enc) else {
        return array_to_columns(array, type_.clone(), options, enc).map(unknown);
    };
    let nested = to_nested(&*array, type_)?;
    let [nested] = nested.as_slice() else {
        return array_to_columns(array, type_.clone(), options, enc).map(unknown);
    };
    // As `to_leaves`: a validity without a null is dropped.
    let leaf = match array.validity() {
        Some(v) if v.unset_bits() == 0 => array.with_validity(None),
        _ => array,
    };
    let encoding = if built {
        match pages::fast_pages(&*leaf, type_, options, enc) {
            pages::Pages::Made(made) => {
                let n = made.iter().map(page_bytes).sum();
                return Ok(vec![(DynIter::new((*made).into_iter().map(Ok)), Some(n))]);
            }
            pages::Pages::Plain => pages::plain_integers(&*leaf),
            pages::Pages::Polars => *encoding,
        }
    } else {
        *encoding
    };
    if built && matches!(encoding, Encoding::DeltaBinaryPacked) {
        if let Some(page) = pages::delta_page(&*leaf, type_, options) {
            let n = page_bytes(&page);
            return Ok(vec![(DynIter::new(std::iter::once(Ok(page))), Some(n))]);
        }
    }
    Ok(vec![(
        array_to_pages(&*leaf, leaf_type.clone(), nested, options, encoding)?,
        None,
    )])
}

/// A column chunk's pages, and their bytes before compression when known.
type ChunkPages = (DynIter<'static, PolarsResult<Page>>, Option<usize>);

/// A page's bytes before compression.
fn page_bytes(page: &Page) -> usize {
    match page {
        Page::Data(p) => p.buffer().len(),
        Page::Dict(p) => p.buffer.len(),
    }
}

/// A column chunk whose pages hold at most this many bytes is stored
/// uncompressed (its codec is UNCOMPRESSED; Parquet's codec is per column
/// chunk). zstd makes at least a 6-byte frame header and a 3-byte block
/// header of any input, and so short an input is seldom shorter
/// compressed (session 13: 901 of dht-125k's 945 pages under 64 bytes came
/// out of zstd stored raw, 9 bytes longer); setting up a frame cost ~6 k
/// instructions a page.
const STORED_BYTES: usize = 64;

/// zstd level of every page: 1, not zstd's default 3 (what polars-parquet's
/// `Compressor` uses): on dht-125k 4 % fewer instructions on the writer
/// thread and 0.6 % smaller files (dht-500k 0.4 % smaller, bulk-1g 1.4 %
/// larger). Readers see the same codec (ZSTD) either way.
const ZSTD_LEVEL: i32 = 1;

/// How zstd compresses a column's pages (the frames are ordinary zstd
/// frames either way: only the compressor's search differs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// [`ZSTD_LEVEL`] as it is.
    Default,
    /// Text of mostly distinct values (plain: community ids, hex ids),
    /// whose bytes are random but for a few repeated ones (the 4-byte
    /// lengths, a `1:` prefix): what zstd gains there is the Huffman coding
    /// of literals, not matches. Its match search tries one position in
    /// [`LITERALS_STEP`] (`targetLength`, the fast strategy's step) and the
    /// literals are still Huffman-coded (zstd would stop coding them once
    /// the step is set, so that is forced). On dht-125k's
    /// flows.community_id (1.73 MB of text a run) the frames come out
    /// 1.7 % smaller and the writer thread spends 30 M fewer instructions
    /// (of 876 M).
    Literals,
    /// Not compressed: a column chunk of at most [`STORED_BYTES`].
    Stored,
}

/// The fast strategy's step in [`Mode::Literals`]: one position in 8.
const LITERALS_STEP: u32 = 8;

/// A row group's zstd context and the mode its parameters are set for.
struct Zstd {
    c: zstd::bulk::Compressor<'static>,
    mode: Mode,
}

impl Zstd {
    /// Sets the context's parameters for `mode` (between frames).
    fn set(&mut self, mode: Mode) -> PolarsResult<()> {
        use zstd::zstd_safe::{CParameter, ParamSwitch};
        if self.mode == mode {
            return Ok(());
        }
        let (step, literals) = match mode {
            // 0: the level's own value; Auto: the level's own choice.
            Mode::Default => (0, ParamSwitch::Auto),
            Mode::Literals => (LITERALS_STEP, ParamSwitch::Enable),
            // zstd is not called.
            Mode::Stored => return Ok(()),
        };
        self.c.set_parameter(CParameter::TargetLength(step))?;
        self.c.set_parameter(CParameter::LiteralCompressionMode(literals))?;
        self.mode = mode;
        Ok(())
    }
}

/// Compresses one encoded page with zstd at [`ZSTD_LEVEL`], as
/// polars-parquet's `Compressor` does, but with the table
/// row group's one zstd context (it makes a context per page, 1–2 % of a run)
/// and without zero-filling the output first.
fn compress_page(z: &mut zstd::bulk::Compressor<'static>, page: Page) -> PolarsResult<CompressedPage> {
    let mut zstd = |src: &[u8]| -> PolarsResult<Vec<u8>> {
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(src.len()));
        z.compress_to_buffer(src, &mut out)
            .map_err(|e| PolarsError::ComputeError(format!("zstd: {e}").into()))?;
        Ok(out)
    };
    match page {
        Page::Data(p) => {
            if !matches!(p.header(), DataPageHeader::V1(_)) {
                // The files are written with Version::V1 pages only.
                return Err(PolarsError::ComputeError("unexpected V2 data page".into()));
            }
            let src = p.buffer();
            let out = zstd(src)?;
            let num_rows = p
                .num_rows()
                .ok_or_else(|| PolarsError::ComputeError("data page without a row count".into()))?;
            Ok(CompressedPage::Data(CompressedDataPage::new(
                p.header().clone(),
                CowBuffer::Owned(out),
                Compression::Zstd,
                src.len(),
                p.descriptor.clone(),
                num_rows,
            )))
        }
        Page::Dict(p) => {
            let out = zstd(&p.buffer)?;
            Ok(CompressedPage::Dict(CompressedDictPage::new(
                CowBuffer::Owned(out),
                Compression::Zstd,
                p.buffer.len(),
                p.num_values,
                p.is_sorted,
            )))
        }
    }
}

/// A page as it is, for a column chunk written uncompressed ([`Mode::Stored`]).
fn store_page(page: Page) -> PolarsResult<CompressedPage> {
    match page {
        Page::Data(mut p) => {
            let num_rows = p
                .num_rows()
                .ok_or_else(|| PolarsError::ComputeError("data page without a row count".into()))?;
            let buf = std::mem::take(p.buffer_mut());
            let n = buf.len();
            Ok(CompressedPage::Data(CompressedDataPage::new(
                p.header().clone(),
                CowBuffer::Owned(buf),
                Compression::Uncompressed,
                n,
                p.descriptor.clone(),
                num_rows,
            )))
        }
        Page::Dict(p) => {
            let n = p.buffer.len();
            Ok(CompressedPage::Dict(CompressedDictPage::new(
                p.buffer,
                Compression::Uncompressed,
                n,
                p.num_values,
                p.is_sorted,
            )))
        }
    }
}

/// One column's pages of a row group, compressed one at a time as the file
/// writer takes them (the columns of a group are written one after the
/// other, so the lock is never contended).
struct Compressed<'a, I> {
    pages: I,
    zstd: &'a Mutex<Zstd>,
    mode: Mode,
    current: Option<CompressedPage>,
}

impl<I: Iterator<Item = PolarsResult<Page>>> FallibleStreamingIterator for Compressed<'_, I> {
    type Item = CompressedPage;
    type Error = PolarsError;
    fn advance(&mut self) -> PolarsResult<()> {
        self.current = match self.pages.next() {
            Some(page) => {
                let mut z = self
                    .zstd
                    .lock()
                    .map_err(|_| PolarsError::ComputeError("zstd context poisoned".into()))?;
                let page = page?;
                if self.mode == Mode::Stored {
                    Some(store_page(page)?)
                } else {
                    z.set(self.mode)?;
                    Some(compress_page(&mut z.c, page)?)
                }
            }
            None => None,
        };
        Ok(())
    }
    fn get(&self) -> Option<&CompressedPage> {
        self.current.as_ref()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pages.size_hint()
    }
}

/// Rows per row group when a whole frame is written ([`write_frame`]).
const FRAME_GROUP_ROWS: usize = 64 * 1024;

/// Writes `df` as table `R`'s Parquet file `path` (through `.<name>.tmp`
/// beside it, renamed when complete), with the same Arrow schema as the
/// pipeline's files: `df` holds the table's columns, `sensor` included
/// (`swarmtap merge` writes rows that keep their sensors); columns are
/// taken in the table's order and cast to its types, and a column `df`
/// lacks is written as nulls.
pub fn write_frame<R: Row>(path: &Path, df: &DataFrame) -> PolarsResult<()> {
    let schema = R::schema();
    let h = df.height();
    let mut cols = Vec::with_capacity(schema.len());
    for (name, dtype) in schema.iter() {
        let c = match df.column(name.as_str()) {
            Ok(c) if c.dtype() == dtype => c.clone(),
            Ok(c) => c.cast(dtype)?,
            Err(_) => Column::full_null(name.clone(), h, dtype),
        };
        cols.push(c);
    }
    let out = DataFrame::new(h, cols)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    set_current_table(R::TABLE);
    let f = Dest::File(File::create(&tmp)?);
    let mut t = TableFile::<R>::create(f, tmp, path.to_path_buf(), &schema, None, Arc::from(""))?;
    for off in (0..h).step_by(FRAME_GROUP_ROWS) {
        let mut part = out.slice(off as i64, FRAME_GROUP_ROWS.min(h - off));
        write_df(&mut t, &mut part)?;
    }
    drop(out);
    let (tmp, last) = t.close()?;
    std::fs::rename(tmp, last)?;
    Ok(())
}

impl<R: Row> TableFile<R> {
    /// Starts the file `dest` (`tmp_path`, renamed to `final_path` when
    /// finished) with `schema`; `extra_ts` is a constant column the rows do
    /// not carry.
    fn create(
        dest: Dest,
        tmp_path: PathBuf,
        final_path: PathBuf,
        schema: &Schema,
        extra_ts: Option<(&'static str, i64)>,
        sensor: Arc<str>,
    ) -> PolarsResult<Self> {
        let arrow = arrow_schema::<R>(schema);
        let arrow_fields = arrow.iter_values().cloned().collect();
        let parquet = to_parquet_schema(&arrow)?;
        let fields = parquet.fields().to_vec();
        let encodings = arrow.iter_values().map(|f| get_dtype_encoding(&f.dtype)).collect();
        let options = WriteOptions {
            statistics: StatisticsOptions::default(),
            version: Version::V1,
            compression: CompressionOptions::Zstd(None),
            data_page_size: None,
        };
        let f = BufWriter::with_capacity(WRITE_BUFFER, dest);
        let writer = FileWriter::new_with_parquet_schema(f, arrow, parquet, options);
        Ok(TableFile {
            writer,
            fields,
            encodings,
            options,
            arrow_fields,
            builders: R::Builders::default(),
            tmp_path,
            final_path,
            extra_ts,
            sensor,
        })
    }

    /// Writes the rows still buffered and the footer (which flushes the
    /// file buffer): the file is complete under its temporary name.
    fn close(mut self) -> PolarsResult<(PathBuf, PathBuf)> {
        write_group(&mut self)?;
        self.writer.end(None)?;
        Ok((self.tmp_path, self.final_path))
    }
}

impl TableSink for DirSink {
    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>> {
        let dir = self.staging.path();
        let final_path = dir.join(format!("{}.parquet", R::TABLE));
        let tmp_path = dir.join(format!(".{}.parquet.tmp", R::TABLE));
        let f = Dest::File(File::create(&tmp_path)?);
        TableFile::create(f, tmp_path, final_path, &R::schema(), None, self.sensor.clone())
    }

    fn row_group_rows(&self) -> usize {
        self.row_group_rows
    }

    fn finish<R: Row>(&mut self, t: TableFile<R>) -> PolarsResult<()> {
        let (tmp, last) = t.close()?;
        // Synced to disk by Staging::commit, all files at once.
        std::fs::rename(tmp, last)?;
        Ok(())
    }
}

/// Encodes every table exactly as [`DirSink`] does (column builders,
/// pages, zstd, footer) and drops the bytes: no folder, no file, no
/// fsync. For a run that needs the writer's work done but not its files:
/// the pipeline fuzz target, which has no use for 21 files and their
/// fsyncs per input.
pub struct DiscardSink {
    sensor: Arc<str>,
    /// Bytes the files would have held.
    encoded: Arc<AtomicU64>,
    /// As [`DirSink::row_group_rows`].
    pub row_group_rows: usize,
}

impl DiscardSink {
    pub fn new(sensor: &str) -> Self {
        DiscardSink {
            sensor: sensor.into(),
            encoded: Arc::default(),
            row_group_rows: 64 * 1024,
        }
    }

    /// Bytes encoded so far over every table: what the files would hold.
    pub fn bytes_encoded(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }
}

impl TableSink for DiscardSink {
    fn open<R: Row>(&mut self) -> PolarsResult<TableFile<R>> {
        let none = PathBuf::new();
        TableFile::create(
            Dest::Discard(self.encoded.clone()),
            none.clone(),
            none,
            &R::schema(),
            None,
            self.sensor.clone(),
        )
    }

    fn row_group_rows(&self) -> usize {
        self.row_group_rows
    }

    fn finish<R: Row>(&mut self, t: TableFile<R>) -> PolarsResult<()> {
        t.close().map(drop)
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
/// column. Each file is written in `DIR/.swarmtap-tmp/` (outside every
/// table folder, so no hive reader scanning `DIR/<table>/` meets it), synced
/// to disk, then renamed into its partition: a reader sees whole files only,
/// and a crash or power loss loses at most the interval being written (its
/// temporary files are removed when the next run starts).
pub struct RotatingSink {
    dir: PathBuf,
    interval: Interval,
    sensor: Arc<str>,
    pub row_group_rows: usize,
}

impl RotatingSink {
    /// A live sink into `dir`: refused when `dir` holds anything but a live
    /// dataset, unless `force`; dot-files a killed run left are removed.
    pub fn new(dir: &Path, first: Interval, sensor: &str, force: bool) -> std::io::Result<Self> {
        layout::check_target(dir, Layout::Hive, force)?;
        std::fs::create_dir_all(dir)?;
        layout::remove_stale_parts(dir)?;
        Ok(RotatingSink {
            dir: dir.to_path_buf(),
            interval: first,
            sensor: sensor.into(),
            row_group_rows: 64 * 1024,
        })
    }

    /// Files opened from now on belong to `next`.
    pub fn set_interval(&mut self, next: Interval) {
        self.interval = next;
    }
}

impl TableSink for RotatingSink {
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
        // Written outside the table folders (a hive reader scanning
        // DIR/<table>/ never meets a partial file), renamed in when whole.
        let tmp_dir = self.dir.join(layout::LIVE_TMP_DIR);
        std::fs::create_dir_all(&tmp_dir)?;
        let tmp_path = tmp_dir.join(format!(".{}-{name}.parquet.tmp", R::TABLE));
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
        let f = Dest::File(File::create(&tmp_path)?);
        TableFile::create(f, tmp_path, final_path, &schema, extra_ts, self.sensor.clone())
    }

    fn row_group_rows(&self) -> usize {
        self.row_group_rows
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
