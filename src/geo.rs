//! Geolocation of peer addresses from MaxMind-format databases (`--geoip`).
//!
//! Any number of databases can be given: City or Country databases (MaxMind
//! GeoIP2/GeoLite2, DB-IP lite) fill country, city and coordinates; ASN
//! databases fill the autonomous system. The kind is read from each file's
//! metadata (`database_type`), not from its name. Lookups are cached per
//! address; private, loopback and link-local addresses are never looked up
//! (no database places them, and the answer would only be noise).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use maxminddb::{geoip2, Reader};

use crate::sink::PeerRow;

/// What the databases say about one address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// City name (English).
    pub city: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Organisation registered for the autonomous system.
    pub as_org: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// City or Country records (country, city, location).
    Place,
    /// ASN records.
    Asn,
}

struct Db {
    kind: Kind,
    reader: Reader<Vec<u8>>,
}

/// Open databases and the per-address cache.
pub struct GeoDb {
    dbs: Vec<Db>,
    cache: Mutex<HashMap<IpAddr, GeoInfo>>,
    /// Cache entries kept at most; beyond it the cache is cleared (lookups
    /// are a few µs, the cache only saves repeated work).
    max_cache: usize,
    /// Lookups that failed on a corrupt record (the column stays null).
    pub n_errors: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb").field("dbs", &self.dbs.len()).finish()
    }
}

impl GeoDb {
    /// Opens every database; the error names the file and why it is unusable.
    pub fn open(paths: &[impl AsRef<Path>], max_cache: usize) -> Result<GeoDb, String> {
        let mut dbs = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let reader = Reader::open_readfile(p)
                .map_err(|e| format!("--geoip {}: not a readable MaxMind database: {e}", p.display()))?;
            let t = reader.metadata().database_type.to_ascii_lowercase();
            let kind = if t.contains("asn") {
                Kind::Asn
            } else if t.contains("city") || t.contains("country") {
                Kind::Place
            } else {
                return Err(format!(
                    "--geoip {}: database type {:?} is neither City, Country nor ASN",
                    p.display(),
                    reader.metadata().database_type
                ));
            };
            dbs.push(Db { kind, reader });
        }
        Ok(GeoDb {
            dbs,
            cache: Mutex::new(HashMap::new()),
            max_cache: max_cache.max(1),
            n_errors: Default::default(),
        })
    }

    /// Looks an address up (cached). Non-public addresses give all nulls.
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        if !is_global(ip) {
            return GeoInfo::default();
        }
        if let Some(g) = self.cache.lock().map(|c| c.get(&ip).cloned()).ok().flatten() {
            return g;
        }
        let mut g = GeoInfo::default();
        for db in &self.dbs {
            let found = match db.kind {
                Kind::Place => fill_place(&db.reader, ip, &mut g),
                Kind::Asn => fill_asn(&db.reader, ip, &mut g),
            };
            if found.is_err() {
                self.n_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= self.max_cache {
                c.clear();
            }
            c.insert(ip, g.clone());
        }
        g
    }

    /// Fills the geolocation columns of `peers` rows.
    pub fn annotate_peers(&self, rows: &mut [PeerRow]) {
        for r in rows {
            let Ok(ip) = r.peer_ip.parse::<IpAddr>() else { continue };
            let g = self.lookup(ip);
            r.country = g.country;
            r.city = g.city;
            r.latitude = g.latitude;
            r.longitude = g.longitude;
            r.asn = g.asn.map(u64::from);
            r.as_org = g.as_org;
        }
    }
}

fn fill_place(r: &Reader<Vec<u8>>, ip: IpAddr, g: &mut GeoInfo) -> Result<(), maxminddb::MaxMindDbError> {
    let res = r.lookup(ip)?;
    // City databases decode as City; Country databases simply lack the
    // city and location parts, which then stay empty.
    let Some(c) = res.decode::<geoip2::City>()? else {
        return Ok(());
    };
    // A database given earlier wins: the user lists the preferred one first.
    if g.country.is_none() {
        g.country = c.country.iso_code.map(str::to_owned);
    }
    if g.city.is_none() {
        g.city = c.city.names.english.map(str::to_owned);
    }
    if g.latitude.is_none() && g.longitude.is_none() {
        g.latitude = c.location.latitude;
        g.longitude = c.location.longitude;
    }
    Ok(())
}

fn fill_asn(r: &Reader<Vec<u8>>, ip: IpAddr, g: &mut GeoInfo) -> Result<(), maxminddb::MaxMindDbError> {
    let res = r.lookup(ip)?;
    let Some(a) = res.decode::<geoip2::Asn>()? else {
        return Ok(());
    };
    if g.asn.is_none() {
        g.asn = a.autonomous_system_number;
        g.as_org = a.autonomous_system_organization.map(str::to_owned);
    }
    Ok(())
}

/// Whether an address can be on the public Internet (so a database may
/// place it): not private, loopback, link-local, multicast, documentation,
/// shared (CGNAT), benchmarking (198.18.0.0/15), IETF protocol assignments
/// (192.0.0.0/24) or unique-local.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_unspecified()
                || a.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_not_looked_up() {
        for a in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "0.0.0.0",
            "192.0.2.7",
            "198.18.0.1",
            "198.19.255.254",
            "192.0.0.8",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(a.parse().unwrap()), "{a}");
        }
        for a in [
            "8.8.8.8",
            "100.128.0.1",
            "2a00:1450::1",
            "::ffff:8.8.4.4",
            "81.2.69.142",
        ] {
            assert!(is_global(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn an_unreadable_database_is_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.mmdb");
        std::fs::write(&p, b"not a database at all").unwrap();
        let e = GeoDb::open(&[&p], 16).unwrap_err();
        assert!(e.contains("not a readable MaxMind database"), "{e}");
        assert!(!e.contains('\n'));
    }
}
