//! Command-line definitions (clap). Validation into [`crate::config::Settings`]
//! happens in `main.rs`; nothing here does work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarmtap",
    version,
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
    /// Print a dataset written by `analyze` as readable tables.
    Summary {
        /// Dataset directory.
        dir: PathBuf,
    },
    /// Print a .torrent file's metainfo: info_hash (v1/v2), name, pieces, files, trackers.
    Torrent {
        /// The .torrent file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Captures, directories of captures, or - for stdin. Without any, the
    /// bundled sample-pcaps/ directory (and its .torrent files) is analyzed.
    pub inputs: Vec<PathBuf>,
    /// Output directory (one <table>.parquet per table).
    #[arg(short = 'o', long = "output", default_value = "swarmtap-out")]
    pub output: PathBuf,
    /// BPF filter (libpcap syntax), applied to files too.
    #[arg(short = 'f', long = "filter")]
    pub filter: Option<String>,
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
    /// Completion threshold for confirmed downloads, as a fraction of pieces.
    #[arg(long = "threshold", default_value_t = 0.98)]
    pub threshold: f64,
    /// Window in seconds (packet time) for peak transfer rates.
    #[arg(long = "rate-window", default_value_t = 5)]
    pub rate_window: u32,
    /// Maximum live flows (memory bound; the least recently active are evicted beyond it).
    #[arg(long = "max-flows")]
    pub max_flows: Option<usize>,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Interface to capture on (`any` for all, with Linux cooked headers).
    #[arg(short = 'i', long = "interface")]
    pub interface: String,
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
    /// Worker threads (default: all cores).
    #[arg(long = "threads", default_value_t = 0)]
    pub threads: usize,
    /// Do not write the peer_messages table.
    #[arg(long = "no-messages")]
    pub no_messages: bool,
    /// Completion threshold for confirmed downloads, as a fraction of pieces.
    #[arg(long = "threshold", default_value_t = 0.98)]
    pub threshold: f64,
    /// Window in seconds (packet time) for peak transfer rates.
    #[arg(long = "rate-window", default_value_t = 5)]
    pub rate_window: u32,
    /// Maximum live flows (memory bound; the least recently active are evicted beyond it).
    #[arg(long = "max-flows")]
    pub max_flows: Option<usize>,
    /// .torrent files or directories of them: piece counts, names, completion.
    #[arg(long = "torrents")]
    pub torrents: Vec<PathBuf>,
    /// MaxMind-format database(s) for the geolocation columns of peers (see analyze).
    #[arg(long = "geoip", value_name = "MMDB")]
    pub geoip: Vec<PathBuf>,
}

/// A duration: a number with an optional unit (ms, s, m, h, d; seconds
/// without one).
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
    use super::parse_duration;
    use std::time::Duration;

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
