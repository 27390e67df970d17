//! Command-line definitions (clap). Validation into [`crate::config::Settings`]
//! happens in `main.rs`; nothing here does work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarmtap",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SWARMTAP_COMMIT"), ")"),
    about = "Passive BitTorrent traffic analyzer: captures in, Parquet datasets out"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Analyze capture files (pcap, pcapng, .gz/.zst, directories, - for stdin) into Parquet tables.
    Analyze(AnalyzeArgs),
    /// Capture from a network interface (libpcap) into hive-partitioned Parquet tables, rotated.
    Live(LiveArgs),
    /// Print a dataset (written by `analyze`, `live` or `probe`) as readable tables.
    Summary {
        /// Dataset directory.
        dir: PathBuf,
        /// text (readable tables) or json (one object: counts, confirmed
        /// downloads, flagged audit series, anomalies by kind).
        #[arg(long = "format", default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Write a dataset's tables as CSV or NDJSON (one file per table), for
    /// tools without Parquet.
    Export(ExportArgs),
    /// Write a dataset as one self-contained HTML page (charts and tables, nothing fetched).
    Report {
        /// Dataset directory (offline or live).
        dir: PathBuf,
        /// Output HTML file.
        #[arg(short = 'o', long = "output", default_value = "report.html")]
        output: PathBuf,
    },
    /// Probe swarms actively: announce to trackers, contact peers (TCP,
    /// plaintext or MSE), read their piece counts, revisit until they complete.
    Probe(Box<ProbeArgs>),
    /// Merge datasets (time pieces of one tap, several sensors; offline or
    /// live) into one analyze dataset: events unioned and deduplicated,
    /// connections cut by a piece joined back, peers, torrents and the
    /// announce audit recomputed (docs/MERGE.md).
    Merge(MergeArgs),
    /// Print a .torrent file's metainfo: info_hash (v1/v2), name, pieces, files, trackers.
    Torrent {
        /// The .torrent file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Datasets to merge (analyze output, or live hive-partitioned output).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output directory (one <table>.parquet per table). Written into a new
    /// folder beside it and swapped in when the merge succeeds.
    #[arg(short = 'o', long = "output", default_value = "swarmtap-merged")]
    pub output: PathBuf,
    /// How far apart two sensors' timestamps of the same packet may be
    /// (e.g. 2s, 500ms): rows of different sensors with the same key
    /// within it are one event.
    #[arg(long = "tolerance", default_value = "2s", value_parser = parse_duration)]
    pub tolerance: std::time::Duration,
    /// Longest pause between a connection's end in one time piece and its
    /// mid-stream pick-up in the next for the two to be joined.
    #[arg(long = "join-gap", default_value = "120s", value_parser = parse_duration)]
    pub join_gap: std::time::Duration,
    /// Completion threshold for confirmed downloads, as a fraction of
    /// pieces (as analyze's).
    #[arg(long = "threshold", default_value_t = 0.98)]
    pub threshold: f64,
    /// Replace an output folder that holds something other than an analyze dataset.
    #[arg(long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Dataset directory (analyze, live or probe output).
    pub dir: PathBuf,
    /// csv or ndjson.
    #[arg(long = "format", value_parser = ["csv", "ndjson"])]
    pub format: String,
    /// Only these tables (repeatable; default: every table).
    #[arg(long = "table")]
    pub table: Vec<String>,
    /// Output directory (default: DIR-<format> beside DIR, so that the
    /// dataset folder holds only the dataset).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Captures, directories of captures, or - for stdin. Without any: stdin
    /// when it is a pipe or a file, else the bundled sample-pcaps/
    /// directory (and its .torrent files).
    pub inputs: Vec<PathBuf>,
    /// A capture to read (as tcpdump -r; repeatable, same as a positional input).
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub read: Vec<PathBuf>,
    /// Output directory (one <table>.parquet per table). Written into a new
    /// folder beside it and swapped in when the run succeeds.
    #[arg(short = 'o', long = "output", default_value = "swarmtap-out")]
    pub output: PathBuf,
    /// BPF filter (libpcap syntax), applied to files too.
    #[arg(short = 'f', long = "filter")]
    pub filter: Option<String>,
    #[command(flatten)]
    pub opts: AnalysisOpts,
}

/// Options of the analysis itself, shared by `analyze` and `live`.
#[derive(Debug, Args)]
pub struct AnalysisOpts {
    /// .torrent files or directories of them: piece counts, names, completion.
    #[arg(long = "torrents")]
    pub torrents: Vec<PathBuf>,
    /// MaxMind-format database (GeoLite2/GeoIP2 City, Country or ASN; DB-IP
    /// lite): country, city, coordinates and AS of peers. Repeatable.
    #[arg(long = "geoip", value_name = "MMDB")]
    pub geoip: Vec<PathBuf>,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long = "threads", default_value_t = 0)]
    pub threads: usize,
    /// Do not write the peer_messages table.
    #[arg(long = "no-messages")]
    pub no_messages: bool,
    /// Also write connection, peer, torrent and audit rows of flows whose
    /// BitTorrent identification is weak (structure alone: an MSE-shaped
    /// opening nobody corroborates, uTP-shaped datagrams, mid-stream bytes
    /// that frame as peer wire one way). By default they stay in `flows`.
    #[arg(long = "keep-weak")]
    pub keep_weak: bool,
    /// Completion threshold for confirmed downloads, as a fraction of pieces.
    #[arg(long = "threshold", default_value_t = 0.98)]
    pub threshold: f64,
    /// Window (packet time) for peak transfer rates: seconds, or a duration
    /// (5s, 1m); whole seconds, at least 1.
    #[arg(long = "rate-window", default_value = "5s", value_parser = parse_duration)]
    pub rate_window: std::time::Duration,
    /// Name written in every table's `sensor` column (default: the host name).
    #[arg(long = "sensor", value_name = "NAME")]
    pub sensor: Option<String>,
    /// Write into an output folder even when it holds something other than
    /// a swarmtap dataset of this layout (analyze: it is replaced).
    #[arg(long = "force")]
    pub force: bool,
    /// Maximum live flows (memory bound; the least recently active are evicted beyond it).
    #[arg(long = "max-flows")]
    pub max_flows: Option<usize>,
    /// Memory the flows' state and buffers may be accounted for, over the
    /// whole flow table (default 128MiB): past it the least recently
    /// active flows are evicted (counted). Bytes, or with a unit: 512M,
    /// 1.5GiB (K/M/G/T are powers of 1024); at least 1M.
    #[arg(long = "max-memory", value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<usize>,
    /// Drop TCP/UDP packets with a wrong checksum, as their receiver would
    /// (they are always counted: flows.n_bad_checksums, capture_stats).
    /// Checksum-offload patterns from the capturing host are not wrong.
    #[arg(long = "verify-checksums")]
    pub verify_checksums: bool,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Torrents: .torrent files, magnet links or info hashes (40 hex / 32 base32).
    pub targets: Vec<String>,
    /// .torrent files (also accepted as plain arguments).
    #[arg(long = "torrent")]
    pub torrent: Vec<PathBuf>,
    /// Magnet links (metadata is fetched with ut_metadata and verified).
    #[arg(long = "magnet")]
    pub magnet: Vec<String>,
    /// Bare info hashes.
    #[arg(long = "info-hash")]
    pub info_hash: Vec<String>,
    /// A peer endpoint IP:PORT contacted for every torrent (repeatable).
    #[arg(long = "peer")]
    pub peer: Vec<String>,
    /// A passive dataset directory (written by analyze): its torrents and peer endpoints become targets.
    #[arg(long = "from")]
    pub from: Option<PathBuf>,
    /// Output directory (one <table>.parquet per table, all tables present),
    /// swapped in when the probe ends.
    #[arg(short = 'o', long = "output", default_value = "swarmtap-out")]
    pub output: PathBuf,
    /// Name written in every table's `sensor` column (default: the host name).
    #[arg(long = "sensor", value_name = "NAME")]
    pub sensor: Option<String>,
    /// Write into an output folder even when it holds something other than
    /// a swarmtap dataset (it is replaced).
    #[arg(long = "force")]
    pub force: bool,
    /// Longest time between visits of a peer that has not completed yet (e.g. 300, 5m, 10s, 500ms): a peer whose piece count does not move is revisited this often; a moving one just after its predicted threshold crossing, within --min-revisit..--revisit.
    #[arg(long = "revisit", default_value = "5m")]
    pub revisit: String,
    /// Shortest time between visits of a peer (the scheduler's lower bound).
    #[arg(long = "min-revisit", default_value = "10s")]
    pub min_revisit: String,
    /// First back-off after a failed visit; doubles per consecutive failure.
    #[arg(long = "retry", default_value = "30s")]
    pub retry: String,
    /// Longest back-off after repeated failures.
    #[arg(long = "max-backoff", default_value = "30m")]
    pub max_backoff: String,
    /// Run length (default: until SIGINT).
    #[arg(long = "duration")]
    pub duration: Option<String>,
    /// Silence after which a contact ends (after the handshake).
    #[arg(long = "idle-timeout", default_value = "6s")]
    pub idle_timeout: String,
    /// Longest single contact (a peer that keeps sending `have`s is heard until then; one expected to cross the threshold before then is held open through silences).
    #[arg(long = "max-contact", default_value = "2m")]
    pub max_contact: String,
    /// TCP connect timeout.
    #[arg(long = "connect-timeout", default_value = "5s")]
    pub connect_timeout: String,
    /// Time allowed for the (MSE and) BitTorrent handshake.
    #[arg(long = "handshake-timeout", default_value = "10s")]
    pub handshake_timeout: String,
    /// Contacts in progress at once.
    #[arg(long = "concurrency", default_value_t = 64)]
    pub concurrency: usize,
    /// New contacts per second (global).
    #[arg(long = "rate", default_value_t = 20.0)]
    pub rate: f64,
    /// Crypto modes tried in order while a peer drops us: plain, rc4 (MSE with RC4),
    /// mse-plain (MSE, plaintext payload), mse (MSE, peer's choice). Comma-separated.
    #[arg(long = "crypto", default_value = "plain,rc4")]
    pub crypto: String,
    /// Transports tried in order: tcp, utp (BEP 29). A peer that answered over
    /// one, or that ut_pex flags as speaking uTP, is tried that way first.
    #[arg(long = "transport", default_value = "tcp,utp")]
    pub transport: String,
    /// Allow contacting private, loopback and other non-public addresses.
    #[arg(long = "allow-private")]
    pub allow_private: bool,
    /// Only contact addresses in these CIDR blocks (repeatable).
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Never contact addresses in these CIDR blocks (repeatable).
    #[arg(long = "deny")]
    pub deny: Vec<String>,
    /// Completion threshold for confirmed downloads, as a fraction of pieces.
    #[arg(long = "threshold", default_value_t = 0.98)]
    pub threshold: f64,
    /// Do not announce to trackers.
    #[arg(long = "no-announce")]
    pub no_announce: bool,
    /// Accept incoming peers on this port, TCP and uTP (plaintext and MSE), and announce it.
    #[arg(long = "listen")]
    pub listen: Option<u16>,
    /// Port announced to trackers (without --listen; nothing listens on it).
    #[arg(long = "announce-port", default_value_t = 6881)]
    pub announce_port: u16,
    /// numwant of our announces.
    #[arg(long = "numwant", default_value_t = 200)]
    pub numwant: i32,
    /// Shortest re-announce interval, whatever the tracker says.
    #[arg(long = "min-reannounce", default_value = "60s")]
    pub min_reannounce: String,
    /// Do not contact peers learned from ut_pex.
    #[arg(long = "no-pex")]
    pub no_pex: bool,
    /// Messages read per contact before it ends.
    #[arg(long = "max-msgs")]
    pub max_msgs: Option<u64>,
    /// Peers tracked (memory bound).
    #[arg(long = "max-peers")]
    pub max_peers: Option<usize>,
    /// DHT entry point HOST:PORT for our own (read-only) DHT node (repeatable).
    /// None by default: without it the probe runs no DHT node.
    #[arg(long = "dht-bootstrap")]
    pub dht_bootstrap: Vec<String>,
    /// UDP port of our DHT node (0: any free port).
    #[arg(long = "dht-port", default_value_t = 0)]
    pub dht_port: u16,
    /// Time between DHT get_peers rounds for every torrent.
    #[arg(long = "dht-interval", default_value = "5m")]
    pub dht_interval: String,
    /// Do not scrape trackers (by default each tracker is scraped before each announce).
    #[arg(long = "no-scrape")]
    pub no_scrape: bool,
    /// A PEM file of CA certificates trusted for https trackers, besides the
    /// system's store (a private tracker's own CA; repeatable).
    #[arg(long = "tracker-ca", value_name = "FILE")]
    pub tracker_ca: Vec<PathBuf>,
    /// Do not verify https trackers' certificates (chain and name). Only
    /// when you know why: anyone on the path can then answer for the tracker.
    #[arg(long = "tracker-insecure")]
    pub tracker_insecure: bool,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Interface to capture on (`any` for all, with Linux cooked headers).
    #[arg(short = 'i', long = "interface", required_unless_present = "list_interfaces")]
    pub interface: Option<String>,
    /// List the interfaces libpcap can capture on, and exit (as tcpdump -D).
    #[arg(short = 'D', long = "list-interfaces")]
    pub list_interfaces: bool,
    /// Output directory: DIR/<table>/date=YYYY-MM-DD/hour=HH/part-<start>-<seq>.parquet.
    #[arg(short = 'o', long = "output", default_value = "swarmtap-out")]
    pub output: PathBuf,
    /// BPF filter (libpcap syntax), run in the kernel.
    #[arg(short = 'f', long = "filter")]
    pub filter: Option<String>,
    /// Interval between rotations (e.g. 900, 90s, 15m, 1h; SIGHUP rotates at once).
    #[arg(long = "rotate", default_value = "15m", value_parser = parse_duration)]
    pub rotate: std::time::Duration,
    /// Bytes kept of each packet.
    #[arg(long = "snaplen", default_value_t = 262_144)]
    pub snaplen: u32,
    /// Do not put the interface in promiscuous mode.
    #[arg(long = "no-promisc")]
    pub no_promisc: bool,
    /// Kernel capture buffer in MiB.
    #[arg(long = "buffer-mb", default_value_t = 64)]
    pub buffer_mb: u32,
    /// Stop after this long (same syntax as --rotate).
    #[arg(long = "duration", value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Stop after this many packets (as libpcap delivers them, after -f; dropped ones included).
    #[arg(long = "count")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub opts: AnalysisOpts,
}

/// A duration: a number with an optional unit (ms, s, m, h, d; seconds
/// without one).
/// A size in bytes: a number, optionally with a unit (B, K/KB/KiB,
/// M/MB/MiB, G/GB/GiB, T/TB/TiB; all powers of 1024), at least 1 MiB.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (e.g. 512M, 2GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?} (K, M, G or T)")),
    };
    let bytes = num * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < (1u64 << 20) as f64 {
        return Err(format!("{s:?} is less than 1 MiB"));
    }
    Ok(if bytes >= usize::MAX as f64 {
        usize::MAX
    } else {
        bytes as usize
    })
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 90s, 15m, 1h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_size};
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert!(parse_size("1048575").is_err());
        assert!(parse_size("100K").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
