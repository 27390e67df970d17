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
