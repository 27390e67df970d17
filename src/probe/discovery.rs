//! Discovery besides tracker announces: our DHT node's reports (peers with
//! source `dht`, `dht_messages` rows) and tracker scrapes (`tracker_scrapes`
//! rows). Kept apart from the scheduler in `mod.rs`; the scheduler only
//! routes the events here.

use tokio::sync::{mpsc, watch};

use super::dht::{self, DhtConfig, DhtReport};
use super::scrape::ScrapeResult;
use super::{session, Event, Probe, SRC_DHT};
use crate::proto::dht::Method;
use crate::proto::metainfo::hex;
use crate::sink::{TrackerScrapeRow, Ts};

impl Probe {
    /// Starts our DHT node when `--dht-bootstrap` gave entry points; true
    /// when it runs (it sends `TrackerEnded` when it stops).
    pub(super) async fn start_dht(&mut self, tx: &mpsc::Sender<Event>, stop: &watch::Receiver<bool>) -> bool {
        if self.s.dht_bootstrap.is_empty() {
            return false;
        }
        let bootstrap = dht::resolve_bootstrap(&self.s.dht_bootstrap).await;
        if bootstrap.is_empty() {
            eprintln!("swarmtap: no usable DHT bootstrap address; DHT off");
            return false;
        }
        let cfg = DhtConfig {
            bootstrap,
            port: self.s.dht_port,
            interval: self.s.dht_interval,
            policy: self.s.policy.clone(),
            limits: self.s.limits.dht,
        };
        let targets: Vec<(u32, [u8; 20])> = self
            .torrents
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32, t.target.info_hash))
            .collect();
        // With --listen, peers told our listen port send their DHT queries
        // to it: the node shares that port with uTP unless --dht-port names
        // another.
        // Each family's node on its own uTP socket's port (IPv4, IPv6).
        let share = self.s.listen.is_some() && (self.s.dht_port == 0 || Some(self.s.dht_port) == self.s.listen);
        let port = |u: &Option<std::sync::Arc<super::utp::UtpSocket>>| match u {
            Some(u) if share => dht::DhtPort::Shared(u.clone(), u.take_krpc(self.s.limits.dht.max_queued_datagrams)),
            _ => dht::DhtPort::Own,
        };
        let ports = [port(&self.utp), port(&self.utp6)];
        let (rtx, mut rrx) = mpsc::channel::<DhtReport>(64);
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = dht::run_on(cfg, ports, targets, rtx, stop).await {
                eprintln!("swarmtap: DHT node: {e}");
            }
        });
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(r) = rrx.recv().await {
                let _ = tx.send(Event::Dht(Box::new(r))).await;
            }
            let _ = tx.send(Event::TrackerEnded).await;
        });
        true
    }

    pub(super) fn on_dht(&mut self, r: DhtReport) {
        let now = session::now_us();
        for l in &r.lookups {
            if l.method == Method::GetPeers {
                eprintln!(
                    "swarmtap: DHT{} get_peers {}: {} peer(s), {} queries, {} answers, {}/{} closest answered, {:.0} ms",
                    if l.ipv6 { " (IPv6)" } else { "" },
                    hex(&l.target),
                    l.n_values,
                    l.n_queries,
                    l.n_responses,
                    l.n_closest_answered,
                    self.s.limits.dht.k,
                    l.elapsed.as_secs_f64() * 1000.0
                );
            }
        }
        if let Some(st) = &r.stats {
            eprintln!("swarmtap: DHT totals: {st:?}");
        }
        // BEP 33 scrapes: one tracker_scrapes row per get_peers lookup
        // whose answers carried the filters (transport dht, the counts
        // estimated from the union of the filters).
        for l in &r.lookups {
            let (Some(sc), Some(t)) = (l.scrape, l.torrent) else {
                continue;
            };
            let Some(ts) = self.torrents.get(t as usize) else {
                continue;
            };
            eprintln!(
                "swarmtap: DHT{} scrape {}: ~{:.1} seed(s), ~{:.1} downloader(s) from {} answer(s)",
                if l.ipv6 { " (IPv6)" } else { "" },
                hex(&l.target),
                sc.seeds.max(0.0),
                sc.peers.max(0.0),
                sc.n_answers
            );
            self.rows.tracker_scrapes.push(TrackerScrapeRow {
                ts: Ts(now),
                frame: 0,
                capture: "probe".into(),
                conn_id: 0,
                transport: "dht",
                info_hash: hex(&ts.target.info_hash),
                request_ts: Some(Ts(now - l.elapsed.as_micros() as i64)),
                answered: true,
                seeders: Some(sc.seeds.round().max(0.0) as i64),
                leechers: Some(sc.peers.round().max(0.0) as i64),
                ..Default::default()
            });
        }
        self.rows.dht_messages.extend(r.rows);
        for (torrent, peer, _from) in r.found {
            if (torrent as usize) < self.torrents.len() {
                self.add_peer(torrent, peer, SRC_DHT, now);
            }
        }
    }

    pub(super) fn on_scrape(&mut self, _torrent: u32, url: &str, udp: bool, r: ScrapeResult) {
        self.summary.n_tls_refused += u64::from(r.tls_refused);
        let transport = super::tracker::TrackerUrl::parse(url)
            .map(|t| t.transport())
            .unwrap_or(if udp { "udp" } else { "http" });
        let base = TrackerScrapeRow {
            ts: Ts(r.response_ts_us.unwrap_or(r.ts_us)),
            frame: 0,
            capture: "probe".into(),
            conn_id: 0,
            transport,
            client_ip: r.local.map(|a| a.ip().to_string()).unwrap_or_default(),
            tracker_ip: r.tracker.map(|a| a.ip().to_string()).unwrap_or_default(),
            tracker_port: r.tracker.map(|a| u32::from(a.port())).unwrap_or(0),
            request_ts: Some(Ts(r.ts_us)),
            answered: r.response_ts_us.is_some(),
            failure_reason: r.failure.clone().or_else(|| r.error.clone()),
            ..Default::default()
        };
        if let Some(e) = &r.error {
            eprintln!("swarmtap: scrape of {url}: {e}");
        }
        for (h, c, name) in &r.files {
            self.rows.tracker_scrapes.push(TrackerScrapeRow {
                info_hash: hex(h),
                seeders: c.and_then(|c| c.seeders),
                leechers: c.and_then(|c| c.leechers),
                completed: c.and_then(|c| c.completed),
                name: name.clone(),
                ..base.clone()
            });
        }
        if r.files.is_empty() {
            // Unanswered or failed: one row per torrent asked, null counts.
            if let Some(t) = self.torrents.get(_torrent as usize) {
                self.rows.tracker_scrapes.push(TrackerScrapeRow {
                    info_hash: hex(&t.target.info_hash),
                    ..base
                });
            }
        }
    }
}
