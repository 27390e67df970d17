//! Thin binary: parse arguments, call the library, map errors to exit codes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use swarmtap::capture::{expand_inputs, InputSpec};
use swarmtap::cli::{AnalyzeArgs, Cli, Command, LiveArgs};
use swarmtap::config::Settings;
use swarmtap::proto::metainfo::{hex, parse_torrent, Metainfo};

/// The bundled captures, analyzed when `analyze` gets no input.
const SAMPLE_PCAPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-pcaps");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Analyze(a) => analyze(a),
        Command::Live(a) => live(a),
        Command::Summary { dir } => swarmtap::summary::print(&dir),
        Command::Torrent { file } => torrent(&file),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmtap: {e}");
            ExitCode::from(1)
        }
    }
}

/// .torrent files named directly or found (recursively) in directories.
fn load_torrents(paths: &[PathBuf]) -> Result<Vec<Metainfo>, String> {
    let mut files = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            for e in rd.flatten() {
                let q = e.path();
                if q.is_dir() || q.extension().is_some_and(|x| x == "torrent") {
                    stack.push(q);
                }
            }
        } else {
            files.push(p);
        }
    }
    files.sort();
    files
        .iter()
        .map(|f| {
            let b = std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            parse_torrent(&b).map_err(|e| format!("{} is not a usable .torrent: {e}", f.display()))
        })
        .collect()
}

fn analyze(a: AnalyzeArgs) -> Result<(), String> {
    let (inputs, mut torrent_paths) = if a.inputs.is_empty() {
        let dir = PathBuf::from(SAMPLE_PCAPS);
        eprintln!("swarmtap: no input given; analyzing the bundled {}", dir.display());
        (vec![dir.clone()], vec![dir])
    } else {
        (a.inputs.clone(), Vec::new())
    };
    torrent_paths.extend(a.torrents.iter().cloned());
    if !(0.0..=1.0).contains(&a.threshold) || a.threshold == 0.0 {
        return Err(format!("--threshold must be in (0, 1], not {}", a.threshold));
    }
    let expanded = expand_inputs(&inputs).map_err(|e| e.to_string())?;
    // Files named on the command line that are not captures deserve a word;
    // the other files of a directory (READMEs, .torrent files) do not.
    let mut quiet = 0;
    for s in &expanded.skipped {
        if inputs.contains(&s.path) {
            eprintln!("swarmtap: skipping {}: {}", s.path.display(), s.reason);
        } else {
            quiet += 1;
        }
    }
    if quiet > 0 {
        eprintln!("swarmtap: {quiet} non-capture file(s) in the input directories ignored");
    }
    let inputs: Vec<InputSpec> = expanded.inputs;
    if inputs.is_empty() {
        return Err("no capture files found in the given inputs".into());
    }
    let torrents = load_torrents(&torrent_paths)?;
    let mut settings = Settings {
        threshold: a.threshold,
        messages: !a.no_messages,
        rate_window_s: a.rate_window.max(1),
        threads: a.threads,
        ..Settings::default()
    };
    if !a.geoip.is_empty() {
        let db = swarmtap::geo::GeoDb::open(&a.geoip, settings.limits.max_geo_cache)?;
        settings.geo = Some(std::sync::Arc::new(db));
    }
    if let Some(m) = a.max_flows {
        settings.limits.max_flows = m.max(1);
    }
    let summary = swarmtap::pipeline::analyze(inputs, a.filter.clone(), &a.output, &settings, torrents)?;
    eprintln!("swarmtap: {}", summary.render());
    eprintln!("swarmtap: wrote {}", a.output.display());
    Ok(())
}

fn live(a: LiveArgs) -> Result<(), String> {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use swarmtap::capture::live::LiveOptions;
    use swarmtap::pipeline::{LiveControl, LiveSettings};

    if !(0.0..=1.0).contains(&a.threshold) || a.threshold == 0.0 {
        return Err(format!("--threshold must be in (0, 1], not {}", a.threshold));
    }
    let mut settings = Settings {
        threshold: a.threshold,
        messages: !a.no_messages,
        rate_window_s: a.rate_window.max(1),
        threads: a.threads,
        ..Settings::default()
    };
    if let Some(m) = a.max_flows {
        settings.limits.max_flows = m.max(1);
    }
    let control = LiveControl {
        stop: Arc::new(AtomicBool::new(false)),
        rotate: Arc::new(AtomicBool::new(false)),
    };
    // SIGINT/SIGTERM ask for a clean stop (flush, exit 0); a second one
    // while stopping exits at once (status 130), as users expect of ^C^C.
    // SIGHUP rotates. "A second one" is a second *signal*: the run also
    // sets `stop` itself (--duration, an early return), and a supervisor's
    // one SIGTERM during that final flush must not throw the last interval
    // away, so the signals keep their own flag.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, signalled.clone())
            .and_then(|_| signal_hook::flag::register(sig, signalled.clone()))
            .and_then(|_| signal_hook::flag::register(sig, control.stop.clone()))
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    }
    signal_hook::flag::register(SIGHUP, control.rotate.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Loaded after the handlers are in place: a SIGHUP sent while a large
    // torrent directory or database loads must not kill the sensor.
    if !a.geoip.is_empty() {
        let db = swarmtap::geo::GeoDb::open(&a.geoip, settings.limits.max_geo_cache)?;
        settings.geo = Some(Arc::new(db));
    }
    let torrents = load_torrents(&a.torrents)?;
    let ls = LiveSettings {
        capture: LiveOptions {
            iface: a.interface.clone(),
            filter: a.filter.clone(),
            snaplen: a.snaplen.max(64),
            promisc: !a.no_promisc,
            buffer_bytes: a.buffer_mb.clamp(1, 2047).saturating_mul(1 << 20),
            max_packets: a.count,
            ..LiveOptions::default()
        },
        rotate: a.rotate,
        duration: a.duration,
        torrents,
    };
    let summary = swarmtap::pipeline::live(&ls, &a.output, &settings, &control)?;
    eprintln!("swarmtap: {}", summary.render());
    eprintln!("swarmtap: wrote {}", a.output.display());
    Ok(())
}

fn torrent(file: &Path) -> Result<(), String> {
    use std::fmt::Write as _;
    let mut o = String::new();
    let b = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let m = parse_torrent(&b).map_err(|e| format!("{} is not a usable .torrent: {e}", file.display()))?;
    if let Some(h) = m.info_hash_v1 {
        let _ = writeln!(o, "info_hash     {}", hex(&h));
    }
    if let Some(h) = m.info_hash_v2 {
        let _ = writeln!(o, "info_hash_v2  {}", hex(&h));
    }
    let _ = writeln!(o, "name          {}", m.name);
    let _ = writeln!(o, "piece_length  {}", m.piece_length);
    let _ = writeln!(o, "pieces        {}", m.n_pieces);
    let _ = writeln!(o, "total_bytes   {}", m.total_bytes);
    let _ = writeln!(o, "private       {}", m.private);
    let _ = writeln!(o, "files         {}", m.files.len());
    for f in m.files.iter().take(50) {
        let _ = writeln!(o, "  {:>14}  {}", f.length, f.path);
    }
    if m.files.len() > 50 {
        let _ = writeln!(o, "  … {} more", m.files.len() - 50);
    }
    let _ = writeln!(o, "trackers      {}", m.trackers.len());
    for t in &m.trackers {
        let _ = writeln!(o, "  {t}");
    }
    swarmtap::summary::write_stdout(&o)
}
