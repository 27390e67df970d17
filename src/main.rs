//! Thin binary: parse arguments, call the library, map errors to exit codes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use swarmtap::capture::{expand_inputs, InputSpec};
use swarmtap::cli::{parse_duration, AnalysisOpts, AnalyzeArgs, Cli, Command, LiveArgs, ProbeArgs};
use swarmtap::config::Settings;
use swarmtap::proto::metainfo::{hex, parse_torrent, Metainfo};

/// The bundled captures, analyzed when `analyze` gets no input.
const SAMPLE_PCAPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sample-pcaps");

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Analyze(a) => analyze(a),
        Command::Live(a) => live(a),
        Command::Probe(a) => probe(*a),
        Command::Summary { dir, format } => match format.as_str() {
            "json" => swarmtap::summary::print_json(&dir),
            _ => swarmtap::summary::print(&dir),
        },
        Command::Export(a) => swarmtap::summary::export(&a.dir, &a.format, &a.table, a.output.as_deref()),
        Command::Torrent { file } => torrent(&file),
        Command::Merge(a) => merge(a),
        Command::Report { dir, output } => report(&dir, &output),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swarmtap: {e}");
            ExitCode::from(1)
        }
    }
}

fn merge(a: swarmtap::cli::MergeArgs) -> Result<(), String> {
    if !(a.threshold > 0.0 && a.threshold <= 1.0) {
        return Err(format!("--threshold {} is not in (0, 1]", a.threshold));
    }
    let t = std::time::Instant::now();
    let mut o = swarmtap::merge::MergeOptions::new(a.inputs, a.output);
    o.force = a.force;
    o.tolerance_us = a.tolerance.as_micros().min(i64::MAX as u128) as i64;
    o.join_gap_us = a.join_gap.as_micros().min(i64::MAX as u128) as i64;
    o.threshold = a.threshold;
    let s = swarmtap::merge::merge(&o)?;
    let rows = |t: &str| s.rows.get(t).copied().unwrap_or(0);
    eprintln!(
        "swarmtap: merged {} datasets into {}: {} flows ({} joined across pieces), {} connections ({} joined), {} peers, {} torrents, {} audit series; {} rows removed as copies of another sensor's; {:.2} s",
        s.n_datasets,
        o.output.display(),
        rows("flows"),
        s.joined_flows,
        rows("connections"),
        s.joined_connections,
        rows("peers"),
        rows("torrents"),
        rows("announce_audit"),
        s.deduplicated.values().sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn report(dir: &Path, out: &Path) -> Result<(), String> {
    let t = std::time::Instant::now();
    let w = swarmtap::report::write(dir, out)?;
    eprintln!(
        "swarmtap: wrote {} ({} bytes, {} charts) in {:.2} s",
        out.display(),
        w.bytes,
        w.charts,
        t.elapsed().as_secs_f64()
    );
    Ok(())
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

/// The settings `analyze` and `live` share, from their common options.
fn settings_of(o: &AnalysisOpts) -> Result<Settings, String> {
    if !(0.0..=1.0).contains(&o.threshold) || o.threshold == 0.0 {
        return Err(format!("--threshold must be in (0, 1], not {}", o.threshold));
    }
    let mut settings = Settings {
        threshold: o.threshold,
        messages: !o.no_messages,
        keep_weak: o.keep_weak,
        rate_window_s: u32::try_from(o.rate_window.as_secs()).unwrap_or(u32::MAX).max(1),
        threads: o.threads,
        verify_checksums: o.verify_checksums,
        sensor: o.sensor.clone(),
        force: o.force,
        ..Settings::default()
    };
    if let Some(m) = o.max_flows {
        settings.limits.max_flows = m.max(1);
    }
    if let Some(m) = o.max_memory {
        settings.limits.max_memory = m;
    }
    Ok(settings)
}

/// Opens the `--geoip` databases into `settings`.
fn load_geo(o: &AnalysisOpts, settings: &mut Settings) -> Result<(), String> {
    if !o.geoip.is_empty() {
        let db = swarmtap::geo::GeoDb::open(&o.geoip, settings.limits.max_geo_cache)?;
        settings.geo = Some(std::sync::Arc::new(db));
    }
    Ok(())
}

/// Whether stdin carries data to read: a pipe, a socket or a file (not a
/// terminal, and not a character device such as /dev/null, which CI jobs
/// and service managers hand out when there is no input).
fn stdin_has_data() -> bool {
    use std::io::IsTerminal;
    use std::os::unix::fs::FileTypeExt;
    if std::io::stdin().is_terminal() {
        return false;
    }
    match std::fs::metadata("/proc/self/fd/0") {
        Ok(m) => {
            let t = m.file_type();
            t.is_fifo() || t.is_socket() || t.is_file()
        }
        Err(_) => false,
    }
}

fn analyze(a: AnalyzeArgs) -> Result<(), String> {
    let named: Vec<PathBuf> = a.read.iter().chain(&a.inputs).cloned().collect();
    let (inputs, mut torrent_paths) = if !named.is_empty() {
        (named, Vec::new())
    } else if stdin_has_data() {
        eprintln!("swarmtap: no input named; reading the capture on stdin");
        (vec![PathBuf::from("-")], Vec::new())
    } else {
        let dir = PathBuf::from(SAMPLE_PCAPS);
        eprintln!("swarmtap: no input given; analyzing the bundled {}", dir.display());
        (vec![dir.clone()], vec![dir])
    };
    torrent_paths.extend(a.opts.torrents.iter().cloned());
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
    let mut settings = settings_of(&a.opts)?;
    load_geo(&a.opts, &mut settings)?;
    // ^C stops the run cleanly (the output folder stays as it was); a
    // second one exits at once.
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = swarmtap::pipeline::interrupt_flag();
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
                .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
                .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        }
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

    if a.list_interfaces {
        return list_interfaces();
    }
    let iface = a
        .interface
        .clone()
        .ok_or("live needs -i INTERFACE (swarmtap live -D lists them)")?;
    let mut settings = settings_of(&a.opts)?;
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
    load_geo(&a.opts, &mut settings)?;
    let torrents = load_torrents(&a.opts.torrents)?;
    let ls = LiveSettings {
        capture: LiveOptions {
            iface,
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

/// `live -D`: the interfaces libpcap can open, numbered as tcpdump -D does.
fn list_interfaces() -> Result<(), String> {
    use std::fmt::Write as _;
    let devs = pcap::Device::list().map_err(|e| format!("cannot list interfaces: {e}"))?;
    let mut o = String::new();
    for (i, d) in devs.iter().enumerate() {
        let _ = write!(o, "{}.{}", i + 1, d.name);
        if let Some(desc) = &d.desc {
            let _ = write!(o, " ({desc})");
        }
        let addrs: Vec<String> = d.addresses.iter().map(|a| a.addr.to_string()).collect();
        if !addrs.is_empty() {
            let _ = write!(o, " [{}]", addrs.join(", "));
        }
        o.push('\n');
    }
    swarmtap::summary::write_stdout(&o)
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

fn probe(a: ProbeArgs) -> Result<(), String> {
    use swarmtap::probe::session::{Crypto, Transport};
    use swarmtap::probe::targets::{self, Cidr, Target};
    let mut s = swarmtap::probe::ProbeSettings::new(a.output.clone());
    s.output_options.force = a.force;
    if let Some(n) = &a.sensor {
        s.output_options.sensor = n.clone();
    }
    let mut ts: Vec<Target> = Vec::new();
    let torrent_target = |p: &Path| -> Result<Target, String> {
        let m = load_torrents(&[p.to_path_buf()])?
            .pop()
            .ok_or_else(|| format!("{} holds no .torrent", p.display()))?;
        let ih = m
            .info_hash_v1
            .ok_or_else(|| format!("{}: v2-only torrents are not probed (no v1 info hash)", p.display()))?;
        let mut t = Target::bare(ih);
        t.name = Some(m.name.clone());
        t.trackers = m.trackers.clone();
        t.meta = Some(m);
        Ok(t)
    };
    for x in &a.targets {
        if x.starts_with("magnet:") {
            ts.push(targets::parse_magnet(x)?);
        } else if let Some(ih) = targets::parse_info_hash(x) {
            ts.push(Target::bare(ih));
        } else {
            ts.push(torrent_target(Path::new(x))?);
        }
    }
    for p in &a.torrent {
        ts.push(torrent_target(p)?);
    }
    for m in &a.magnet {
        ts.push(targets::parse_magnet(m)?);
    }
    for h in &a.info_hash {
        ts.push(Target::bare(
            targets::parse_info_hash(h).ok_or_else(|| format!("not an info hash: {h}"))?,
        ));
    }
    if let Some(d) = &a.from {
        ts.extend(targets::from_dataset(d)?);
    }
    // One target per info hash: merge what several sources said.
    let mut merged: Vec<Target> = Vec::new();
    for t in ts {
        match merged.iter_mut().find(|m| m.info_hash == t.info_hash) {
            Some(m) => {
                m.trackers.extend(
                    t.trackers
                        .into_iter()
                        .filter(|x| !m.trackers.contains(x))
                        .collect::<Vec<_>>(),
                );
                m.peers.extend(t.peers);
                if m.meta.is_none() {
                    m.meta = t.meta;
                }
                m.name = m.name.take().or(t.name);
                m.n_pieces = m.n_pieces.or(t.n_pieces);
            }
            None => merged.push(t),
        }
    }
    if merged.is_empty() {
        return Err("nothing to probe: give .torrent files, magnet links, info hashes or --from DIR".into());
    }
    s.targets = merged;
    for p in &a.peer {
        s.peers.push(
            p.parse()
                .map_err(|_| format!("--peer wants IP:PORT ([IPv6]:PORT), not {p}"))?,
        );
    }
    for (list, out) in [(&a.allow, &mut s.policy.allow), (&a.deny, &mut s.policy.deny)] {
        for c in list {
            out.push(Cidr::parse(c).ok_or_else(|| format!("not an address block: {c}"))?);
        }
    }
    s.policy.allow_private = a.allow_private;
    s.revisit = parse_duration(&a.revisit)?;
    s.min_revisit = parse_duration(&a.min_revisit)?.min(s.revisit);
    s.retry = parse_duration(&a.retry)?;
    s.max_backoff = parse_duration(&a.max_backoff)?;
    s.duration = a.duration.as_deref().map(parse_duration).transpose()?;
    s.idle_timeout = parse_duration(&a.idle_timeout)?;
    s.connect_timeout = parse_duration(&a.connect_timeout)?;
    s.handshake_timeout = parse_duration(&a.handshake_timeout)?;
    s.min_reannounce = parse_duration(&a.min_reannounce)?;
    if a.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    s.concurrency = a.concurrency;
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err(format!("--rate must be positive, not {}", a.rate));
    }
    s.rate = a.rate;
    s.crypto = a
        .crypto
        .split(',')
        .map(|c| Crypto::parse(c.trim()).ok_or_else(|| format!("unknown crypto mode {c} (plain, rc4, mse-plain, mse)")))
        .collect::<Result<_, _>>()?;
    if s.crypto.is_empty() {
        return Err("--crypto needs at least one mode".into());
    }
    s.transports = a
        .transport
        .split(',')
        .map(|t| Transport::parse(t.trim()).ok_or_else(|| format!("unknown transport {t} (tcp, utp)")))
        .collect::<Result<_, _>>()?;
    if s.transports.is_empty() {
        return Err("--transport needs at least one of tcp, utp".into());
    }
    if !(0.0..=1.0).contains(&a.threshold) || a.threshold == 0.0 {
        return Err(format!("--threshold must be in (0, 1], not {}", a.threshold));
    }
    s.threshold = a.threshold;
    s.announce = !a.no_announce;
    s.announce_port = a.announce_port;
    s.numwant = a.numwant;
    s.pex = !a.no_pex;
    s.listen = a.listen;
    s.dht_bootstrap = a.dht_bootstrap.clone();
    s.dht_port = a.dht_port;
    s.dht_interval = parse_duration(&a.dht_interval)?;
    if s.dht_interval.is_zero() {
        return Err("--dht-interval must be positive".into());
    }
    s.scrape = !a.no_scrape;
    s.tls.ca_files = a.tracker_ca.clone();
    s.tls.insecure = a.tracker_insecure;
    s.limits = Settings::default().limits.probe;
    s.limits.max_contact = parse_duration(&a.max_contact)?;
    if let Some(m) = a.max_msgs {
        s.limits.max_msgs = m.max(1);
    }
    if let Some(m) = a.max_peers {
        s.limits.max_peers = m.max(1);
    }
    let summary = swarmtap::probe::run(s)?;
    eprintln!("swarmtap: {}", summary.render());
    eprintln!("swarmtap: wrote {}", a.output.display());
    Ok(())
}
